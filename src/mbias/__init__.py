"""mbias: make LLM output safe without losing its meaning.

>>> from mbias import Debiaser
>>> Debiaser().debias(["Old people can't learn new tech."])  # doctest: +SKIP
"""

from mbias.errors import MbiasError
from mbias.intervene import Debiaser, DebiasSettings, debias
from mbias.prompts import INSTRUCTION

__all__ = ["Debiaser", "DebiasSettings", "INSTRUCTION", "MbiasError", "debias"]
__version__ = "0.1.0"
