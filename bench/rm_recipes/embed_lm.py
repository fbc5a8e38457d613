"""SmolLM2-Instruct with the prompt in its chat template (last Human turn only): pooled hidden states of the RESPONSE tokens
at several layers, the final token's states, and the response log-likelihood (an 'implicit reward' feature).
usage: python embed_lm.py [max_prompt_tokens=96] [max_resp_tokens=128]"""
import sys, time
from common import *
from formats import last_turn
from embed import all_texts
from transformers import AutoTokenizer, AutoModelForCausalLM
from open_chatgpt.models import resolve_model

def chat_ids(tok, prompt, response, mp, mr):
    q = last_turn(prompt).replace("\n\nHuman:", "").replace("\n\nAssistant:", "").strip()
    pre = tok("<|im_start|>user\n", add_special_tokens=False)["input_ids"]
    qi = tok(q, add_special_tokens=False)["input_ids"][-mp:]
    mid = tok("<|im_end|>\n<|im_start|>assistant\n", add_special_tokens=False)["input_ids"]
    ri = tok(response.strip(), add_special_tokens=False)["input_ids"][:mr - 1] + [tok.convert_tokens_to_ids("<|im_end|>")]
    p = pre + qi + mid
    return p + ri, len(p)

@torch.no_grad()
def main(mp=96, mr=128, layers=(8, 15, 30), batch=16):
    S = splits(); path = resolve_model("smollm2-135m-instruct")
    tok = AutoTokenizer.from_pretrained(path); model = AutoModelForCausalLM.from_pretrained(path).eval()
    items = [chat_ids(tok, p, r, mp, mr) for p, r in all_texts(S)]
    order = sorted(range(len(items)), key=lambda i: len(items[i][0]))
    N, d = len(items), model.config.hidden_size
    F = {f"L{l}__{k}": np.zeros((N, d), np.float32) for l in layers for k in ("rmean", "last")}
    LP = np.zeros((N, 3), np.float32)   # sum logp, mean logp, n response tokens
    t = time.time(); ntok = 0
    for s in range(0, N, batch):
        idx = order[s:s + batch]; T = max(len(items[i][0]) for i in idx)
        ids = torch.full((len(idx), T), tok.pad_token_id or 0); m = torch.zeros_like(ids); rm = torch.zeros_like(ids, dtype=torch.float32)
        for j, i in enumerate(idx):
            x, pl = items[i]; ids[j, :len(x)] = torch.tensor(x); m[j, :len(x)] = 1; rm[j, pl:len(x)] = 1
        ntok += int(m.sum())
        out = model(input_ids=ids, attention_mask=m, output_hidden_states=True)
        lp = torch.log_softmax(out.logits[:, :-1].float(), -1).gather(-1, ids[:, 1:, None]).squeeze(-1)  # (B, T-1) logp of token t+1
        rmask = rm[:, 1:]
        LP[idx, 0] = (lp * rmask).sum(1).numpy(); LP[idx, 2] = rmask.sum(1).numpy(); LP[idx, 1] = LP[idx, 0] / LP[idx, 2]
        last = m.sum(1) - 1
        for l in layers:
            h = out.hidden_states[l]
            F[f"L{l}__rmean"][idx] = ((h * rm[..., None]).sum(1) / rm.sum(1, keepdim=True)).numpy()
            F[f"L{l}__last"][idx] = h[torch.arange(len(idx)), last].numpy()
    dt = time.time() - t
    for k, v in F.items(): np.save(CACHE / f"emb__smolchat__last{mp}_{mr}__{k}.npy", v)
    np.save(CACHE / f"emb__smolchat__last{mp}_{mr}__logp.npy", LP)
    log_result(exp="embed", model="smollm2-135m-instruct", fmt=f"chat(last turn {mp}) + response {mr}", n=N, seconds=dt,
               ms_per_text=dt / N * 1000, mean_tokens=ntok / N)
    ntr, nte = len(S["train"]), len(S["test"])
    for j, k in enumerate(("sum logp", "mean logp")):
        for sp, (a, b) in (("train", (0, ntr)), ("test", (2 * ntr, 2 * ntr + nte))):
            n = b - a; mg = LP[a:b, j] - LP[a + n:b + n, j]
            print(f"zero-shot {k} ({sp}): {fmt(acc(mg))}")
            log_result(exp="zeroshot", recipe=f"SmolLM2-Instruct {k}(response | last turn)", split=sp, **acc(mg))

if __name__ == "__main__":
    main(*[int(x) for x in sys.argv[1:]])
