"""Data: question files, LLaVA instruct data, templates and collation, the resumable loader, the predictions file
and the data module that serves training conversations and benchmark questions."""
