"""The chat layer: the client interface (``ChatClient``) every front end talks to, its local
(engine) and remote (HTTP) implementations, the session (messages, options, system prompt),
conversation files, message validation and event accumulation.

(Named ``client``, not ``chat``: ``chatcli.chat`` is the public function.)
"""
