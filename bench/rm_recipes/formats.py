"""Input formats: (prompt, response) -> token ids for a reward model. All keep the response end; prompts cut from the left."""
from open_chatgpt.data import HUMAN, ASSISTANT

def last_turn(prompt: str) -> str:
    "Only the last Human turn of an HH prompt (ends with '\\n\\nAssistant:')."
    i = prompt.rfind(HUMAN)
    return prompt[i:] if i >= 0 else prompt

def enc(tok, t): return tok(t, add_special_tokens=False)["input_ids"]

def encode(tok, prompt: str, response: str, fmt: str, max_length: int, bert: bool):
    """Token ids (and token_type_ids) of one (prompt, response) under `fmt`:
    pr      : [CLS] prompt response [SEP]   (prompt cut from the left first, then the response start)
    proj    : prompt response [SEP] exactly as the project's PairwiseCollator (no [CLS])
    last    : [CLS] last-Human-turn response [SEP]
    resp    : [CLS] response [SEP]
    pair    : [CLS] response [SEP] prompt(left-cut) [SEP]   (text pair, response first; type ids 0/1)
    chat    : (decoders) prompt converted to the chat template + response + eos
    For decoders (bert=False) cls is the BOS-less start and sep is the eos token."""
    cls = [tok.cls_token_id] if bert else []
    sep = [tok.sep_token_id] if bert else [tok.eos_token_id]
    if fmt == "pair":
        r = enc(tok, response.strip())[: max_length - 3]
        p = enc(tok, prompt)[-(max_length - 3 - len(r)):] if max_length - 3 - len(r) > 0 else []
        ids = cls + r + sep + p + sep
        return ids, [0] * (len(r) + 2) + [1] * (len(p) + 1)
    if fmt == "resp": p, r = "", response.strip()
    elif fmt == "last": p, r = last_turn(prompt), response
    elif fmt == "chat":
        from open_chatgpt.models import hh_to_chat
        p, r = hh_to_chat(tok, prompt), response.strip()
    else: p, r = prompt, response
    if fmt == "proj": cls = []
    pi, ri = (enc(tok, p) if p else []), enc(tok, r) + sep
    budget = max_length - len(cls)
    excess = len(pi) + len(ri) - budget
    if excess > 0:
        cut = min(excess, len(pi)); pi = pi[cut:]; ri = ri[excess - cut:]
    ids = cls + pi + ri
    return ids, [0] * len(ids)
