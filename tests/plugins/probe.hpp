#pragma once
// The RPCs of the Probe test entity (probe.cpp), for the tests that call it with typed requests.
#include <cluster/sdk.hpp>
#include <cstdint>
#include <string>
#include <vector>

struct Append {
  struct Request {
    std::string sender;
    std::int64_t value = 0;
    MSGPACK_DEFINE_MAP(sender, value);
  };
  struct Reply {
    std::vector<std::string> log;  // "sender:value" in the order the entity saw them
    MSGPACK_DEFINE_MAP(log);
  };
};

struct Echo {
  struct Request {
    std::string text;
    MSGPACK_DEFINE_MAP(text);
  };
  struct Reply {
    std::string text;
    std::string entity_id;
    std::int32_t shard = 0;
    std::int64_t activation = 0;  // how many Probe instances this plugin created before
    MSGPACK_DEFINE_MAP(text, entity_id, shard, activation);
  };
};

struct Sleep {
  struct Request {
    std::int64_t ms = 0;
    MSGPACK_DEFINE_MAP(ms);
  };
  struct Reply {
    std::int64_t slept_ms = 0;
    MSGPACK_DEFINE_MAP(slept_ms);
  };
};

struct Nothing {
  using Request = cluster::empty;
  using Reply = cluster::empty;
};

struct Relay {
  struct Request {
    std::string target;
    std::string text;
    MSGPACK_DEFINE_MAP(target, text);
  };
  using Reply = Echo::Reply;
};

struct Stamp {
  using Request = cluster::empty;
  struct Reply {
    std::int64_t at_ms = 0;
    MSGPACK_DEFINE_MAP(at_ms);
  };
};

/// Sends `target` an Append (sender, value) without waiting for its reply; answers once the
/// send was accepted.
struct Tell {
  struct Request {
    std::string target;
    std::string sender;
    std::int64_t value = 0;
    MSGPACK_DEFINE_MAP(target, sender, value);
  };
  using Reply = cluster::empty;
};
