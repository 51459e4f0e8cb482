"""What travels through Redis between producers, workers and readers: the queue, events, streamed text."""
