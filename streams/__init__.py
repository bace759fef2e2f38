"""What is streamed and how the server holds it, independent of any transport.

- `params`: the generation parameters and their validation.
- `corpus` and `generator`: the seeded, LLM-like token source.
- `hub`: streams with ids and sequence numbers, replay after reconnect, cancellation, retention.
- `errors`: the project's exception tree.
"""
