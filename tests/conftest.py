import pytest


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    "Keep each test's call-phase report on the item, so fixtures can see whether the test passed (family table)."
    outcome = yield
    rep = outcome.get_result()
    if rep.when == "call" or (rep.when == "setup" and rep.skipped): item.rep_call = rep


@pytest.fixture(autouse=True)
def _restore_environ():
    "Each test sees the same environment: e.g. TrainingArguments(deepspeed=...) sets ACCELERATE_USE_DEEPSPEED=true for the process."
    import os
    saved = dict(os.environ)
    yield
    os.environ.clear(); os.environ.update(saved)
