"""``moshikit agent``: any OpenAI-compatible chat model listening through Kyutai STT and speaking
through Kyutai TTS (Kyutai's Unmute, on one machine): the LLM client, turn-taking and history,
one reply's LLM and TTS streams, and the offline pipeline over a wav."""
