-- Virtual servers: rows of `servers` whose parent is the main server's id. A virtual
-- server has a display name, can be disabled (its devices refused, its data kept), and
-- holds one block of multicast group addresses unique across the whole server.
ALTER TABLE servers ADD COLUMN parent TEXT REFERENCES servers (id);
ALTER TABLE servers ADD COLUMN name TEXT NOT NULL DEFAULT '';
ALTER TABLE servers ADD COLUMN disabled BIGINT NOT NULL DEFAULT 0;
ALTER TABLE servers ADD COLUMN multicast_block BIGINT;
CREATE UNIQUE INDEX servers_by_multicast_block ON servers (parent, multicast_block);
