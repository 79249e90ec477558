"""lightning-vlm: unified vision-language models with Lightning (README.md)."""

from .compat import install_former_modules

install_former_modules()
