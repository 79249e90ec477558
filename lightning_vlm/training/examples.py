"""What a run shows people: generated images beside the truth and sample answers in TensorBoard,
and the metrics table printed after a test."""

from __future__ import annotations

import torch
import torchvision


def tensorboard(module):
    """The TensorBoard SummaryWriter of the module's loggers, or None."""
    from lightning.pytorch.loggers import TensorBoardLogger

    return next((lg.experiment for lg in module.loggers if isinstance(lg, TensorBoardLogger)), None)


def log_examples(module, evaluator, stage: str, images: bool = True, answers: bool = True) -> None:
    """Generated images beside ground-truth renders (one row each) and sample answers, to TensorBoard."""
    tb = tensorboard(module)
    if tb is None or not module.trainer.is_global_zero:
        return
    step = module.global_step
    if images and evaluator.last_images is not None:
        generated, truth, prompts = evaluator.last_images
        pairs = torch.stack([generated.float(), truth.float()], 1).flatten(0, 1)  # [2B, 3, H, W]
        tb.add_image(f"{stage}/generated_vs_truth", torchvision.utils.make_grid(pairs, nrow=2, padding=2, pad_value=1.0), step)
        tb.add_text(f"{stage}/generation_prompts", "\n\n".join(f"{i}. {p}" for i, p in enumerate(prompts)), step)
    if answers and evaluator.examples:
        lines = [f"{e['task']} turn {e['turn']} ({e['image_id']}): {e['answer']}" for e in evaluator.examples]
        tb.add_text(f"{stage}/answers", "\n\n".join(lines), step)


def format_metrics(metrics: dict[str, float], chance: dict[str, float] | None = None) -> str:
    """One table of the headline metrics, the chance level beside each; per-value breakdowns
    (e.g. test/vqa/weather/cloudy) are counted, not listed: they are in the metrics file."""
    chance = chance or {}
    headline = {k: v for k, v in metrics.items() if k.count("/") <= 2 or "/correct/" in k}
    width = max([len(k) for k in headline] + [6])
    lines = [f"{'metric':<{width}}  {'value':>9}  {'chance':>7}"]
    for name, value in sorted(headline.items()):
        level = chance.get(name.split("/", 1)[-1])  # "test/vqa/weather" -> "vqa/weather"
        lines.append(f"{name:<{width}}  {value:9.4f}  {'' if level is None else f'{level:7.3f}'}")
    more = len(metrics) - len(headline)
    if more:
        lines.append(f"(+ {more} per-value breakdowns, e.g. vqa/weather/cloudy, in the metrics file)")
    return "\n".join(lines)


def save_generated_grid(generated: torch.Tensor, truth: torch.Tensor, prompts: list[str], path, rows: int = 8, scale: int = 2) -> None:
    """A PNG of generated images beside the ground-truth renders and their prompts, one row each."""
    import textwrap

    from PIL import Image, ImageDraw, ImageFont

    n, size = min(rows, len(prompts)), generated.shape[-1] * scale
    texts = [textwrap.fill(p, 60) for p in prompts[:n]]
    text_width, pad, row = 420, 4, max([size] + [16 * (t.count("\n") + 1) for t in texts])
    font = ImageFont.load_default(size=13)
    sheet = Image.new("RGB", (2 * size + text_width + 4 * pad, n * (row + pad) + pad + 18), "white")
    draw = ImageDraw.Draw(sheet)
    draw.text((pad, 2), "generated", fill="black", font=font)
    draw.text((2 * pad + size, 2), "truth", fill="black", font=font)
    draw.text((3 * pad + 2 * size, 2), "prompt", fill="black", font=font)
    for i in range(n):
        top = 18 + pad + i * (row + pad)
        for j, image in enumerate((generated[i], truth[i])):
            pixels = (image.float().clamp(0, 1) * 255).byte().permute(1, 2, 0).cpu().numpy()
            sheet.paste(Image.fromarray(pixels).resize((size, size), Image.NEAREST), (pad + j * (size + pad), top))
        draw.multiline_text((3 * pad + 2 * size, top), texts[i], fill="black", font=font)
    sheet.save(path)
