"""The text tokenizer runs single-threaded unless the user says otherwise (threads only spin beside
the training step for 2-3 short strings a sample)."""

import os
import subprocess
import sys

PROBE = "import lightning_vlm.data.tokenizer, os; print(os.environ['TOKENIZERS_PARALLELISM'])"


def parallelism_after_import(env_value: str | None) -> str:
    env = {k: v for k, v in os.environ.items() if k != "TOKENIZERS_PARALLELISM"}
    if env_value is not None:
        env["TOKENIZERS_PARALLELISM"] = env_value
    return subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, check=True).stdout.strip()


def test_tokenizer_threads_are_off_by_default():
    assert parallelism_after_import(None) == "false"


def test_a_users_tokenizers_parallelism_wins():
    assert parallelism_after_import("true") == "true"
