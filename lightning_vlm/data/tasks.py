"""The sample kinds every dataset uses: understanding (vqa, caption) and generation."""

TASKS = ("vqa", "caption", "generation")
