"""Durable bulk inference: the OpenAI Files and Batch API's files, batches and their runs, kept
on the shared filesystem so a batch outlives the router that runs it."""
