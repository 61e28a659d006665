"""Text codec: CLIP's BPE tokenizer (``SimpleTokenizer``) and the ``Tokenize`` codec."""

from vqdiff.modeling.codecs.text.bpe import BPEVocabNotFoundError, SimpleTokenizer, find_bpe_vocab
from vqdiff.modeling.codecs.text.tokenize import Tokenize, tokenize

__all__ = ["BPEVocabNotFoundError", "SimpleTokenizer", "find_bpe_vocab", "Tokenize", "tokenize"]
