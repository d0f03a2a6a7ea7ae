#pragma once
// RPCs of the Tuned test entity (tests/plugins/tuned.cpp), shared with its tests.
#include <cstdint>
#include <cluster/sdk.hpp>

/// Runs `ms` inside the entity (a coroutine sleep), then says what ran beside it.
struct TunedWork {
  struct Request {
    std::int64_t ms = 0;
    MSGPACK_DEFINE_MAP(ms);
  };
  struct Reply {
    std::int64_t activation = 0;
    std::int64_t started_ms = 0;
    std::int64_t ended_ms = 0;
    MSGPACK_DEFINE_MAP(activation, started_ms, ended_ms);
  };
};

/// What the instance saw so far: the most read-only calls running at once, and how often a
/// call ran beside a writing one (a write beside anything, or anything beside a write).
struct TunedStats {
  using Request = cluster::empty;
  struct Reply {
    std::int64_t activation = 0;
    std::int64_t peak_reads = 0;
    std::int64_t write_overlaps = 0;
    std::int64_t fencing_token = 0;
    MSGPACK_DEFINE_MAP(activation, peak_reads, write_overlaps, fencing_token);
  };
};
