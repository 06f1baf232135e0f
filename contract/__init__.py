"""The wire contract of a support ticket: messages, search attributes, names, labels and the
typed client that calls them."""
