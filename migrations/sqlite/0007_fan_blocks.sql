-- The fan list's page index. A creator's fans, in id order, fall into blocks of consecutive
-- ids, each with its count: a page at any offset is found by summing a few hundred counts
-- and skipping less than a block, instead of walking every fan before it (and counting them
-- all for the total). A block holds the creator's fans from its first_id up to the next
-- block's; only the fans module writes it, in the transaction that adds or removes fans.
CREATE TABLE fan_blocks (
    user_id  INTEGER NOT NULL,
    first_id INTEGER NOT NULL,
    fans     INTEGER NOT NULL CHECK (fans >= 0),
    PRIMARY KEY (user_id, first_id)
);
-- A page is read in id order from a block's bound.
CREATE INDEX fans_user_id ON fans (user_id, id);

INSERT INTO fan_blocks (user_id, first_id, fans)
SELECT user_id, MIN(id), COUNT(*)
FROM (SELECT user_id, id, (ROW_NUMBER() OVER (PARTITION BY user_id ORDER BY id) - 1) / 1000 AS block
      FROM fans) numbered
GROUP BY user_id, block;
