#pragma once
// The RPCs of the Hello entity: what callers (and the tests) send and get back.
#include <cluster/sdk.hpp>
#include <cstdint>
#include <string>

namespace hello {

/// Greet (persisted) and GreetVolatile: {"name"} -> a greeting that names the plugin version.
struct Greet {
  struct Request {
    std::string name;
    MSGPACK_DEFINE_MAP(name);
  };
  struct Reply {
    std::string message;
    std::string version;       // the plugin version that answered
    std::int64_t greeted = 0;  // greetings this instance answered, this one included
    MSGPACK_DEFINE_MAP(message, version, greeted);
  };
};

/// GreetLater: answers after `delay_ms` (a coroutine handler sleeping on the runner's clock).
struct GreetLater {
  struct Request {
    std::string name;
    std::int64_t delay_ms = 0;
    MSGPACK_DEFINE_MAP(name, delay_ms);
  };
  struct Reply {
    std::string message;
    std::int64_t answered_at_ms = 0;
    MSGPACK_DEFINE_MAP(message, answered_at_ms);
  };
};

/// Welcome (persisted): greets and asks entity type Mailer to send a welcome mail, with a
/// primary key so that a replay does not send it twice.
struct Welcome {
  struct Request {
    std::string name;
    std::string email;
    MSGPACK_DEFINE_MAP(name, email);
  };
  struct Reply {
    std::string message;
    std::string mail_id;
    MSGPACK_DEFINE_MAP(message, mail_id);
  };
};

/// Mailer.Send: another team's entity type, called by Welcome (a stub in the tests).
struct Send {
  struct Request {
    std::string to;
    std::string subject;
    MSGPACK_DEFINE_MAP(to, subject);
  };
  struct Reply {
    std::string mail_id;
    MSGPACK_DEFINE_MAP(mail_id);
  };
};

}  // namespace hello
