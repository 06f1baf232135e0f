"""The wire contract of a support ticket: messages, search attributes, names, labels, the text
every message writes the same way, and the typed client that calls them."""
