-- The embedded outbound queue at depth: deleting a received message looks it up by its
-- receipt (without an index, every delete scanned the whole queue), and a receive takes the
-- oldest visible messages in the order of the (dead, visible_at, id) index, so it reads
-- about as many rows as it hands out however deep the queue is.
CREATE INDEX outbound_queue_receipt ON outbound_queue (receipt) WHERE receipt IS NOT NULL;
