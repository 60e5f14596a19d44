"""The plain data every layer passes: requests, outcomes, chunks, ids, translations."""
