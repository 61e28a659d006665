"""Command-line tools (see scripts/README.md). Run one by its path (``python scripts/merge_lora.py``); tests
import it as ``scripts.<name>``. Nothing in ``vqdiff`` imports from here."""
