// Entity id → shard, exactly as the cluster computes it (docs/protocol.md "Entity address to
// shard"; libs/protocol/src/shard.cpp): Effect's Hash.string over UTF-16 code units.

/** Effect's `Hash.string` of an id, optimized as `Hash.optimize` does: a signed int32. */
export function hashString(id: string): number {
  // A JS string already is UTF-16 code units; ill-formed UTF-8 from the wire was decoded to
  // U+FFFD by the msgpack decoder the way TextDecoder does.
  let h = 5381;
  for (let i = id.length - 1; i >= 0; --i) h = Math.imul(h, 33) ^ id.charCodeAt(i);
  return (h & 0xbfffffff) | ((h >>> 1) & 0x40000000);
}

/** The shard (1..shards) of an entity id. */
export function shardFor(id: string, shards: number): number {
  if (!Number.isInteger(shards) || shards <= 0) throw new RangeError(`shards must be positive, got ${shards}`);
  return Math.abs(hashString(id) % shards) + 1;
}
