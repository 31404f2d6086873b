"""The scripted OpenAI-compatible chat server, for tests: it ships in ``moshikit.synthetic.llm_server``
(``bench agent`` runs it), and is named here too for the tests that import it from the helpers."""

from ..synthetic.llm_server import ScriptedLLM, tokens_of

__all__ = ["ScriptedLLM", "tokens_of"]
