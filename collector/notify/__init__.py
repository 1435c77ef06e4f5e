"""Push notifications to maintenance crews: channels, a durable queue, rate limits, digests."""
