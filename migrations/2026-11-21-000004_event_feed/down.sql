DROP TRIGGER delivery_attempts_to_feed ON delivery_attempts;
DROP FUNCTION feed_from_delivery_attempt();
DROP TRIGGER outbox_to_feed ON outbox;
DROP FUNCTION feed_from_outbox();
DROP TABLE feed;
