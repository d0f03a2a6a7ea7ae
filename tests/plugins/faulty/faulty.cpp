// Faulty: a plugin whose handlers fail the way other people's native code does. It is built
// out of tree (tests/plugins/CMakeLists.txt compiles it with nothing but the SDK headers), as
// a user's plugin would be.
//
// Every RPC takes {mode}: "ok" answers normally; "abort", "segfault", "loop" and "alloc"
// call std::abort(), write through a null pointer, spin forever and allocate without bound.
// `Crash` is persisted, `CrashVolatile` is not; `Who` reports the process that runs the
// entity and how many messages it has seen (fencing tests compare owners with it).
// `CrashWhile` (persisted) takes {path}: it aborts while a file exists there, so a test can
// make a message crash for a while and then let it succeed (a transient fault).
#include <unistd.h>

#include <cluster/sdk.hpp>
#include <csignal>
#include <cstdlib>
#include <cstring>
#include <vector>

struct Crash {
  struct Request {
    std::string mode = "ok";
    MSGPACK_DEFINE_MAP(mode);
  };
  struct Reply {
    std::string mode;
    std::int64_t pid = 0;
    MSGPACK_DEFINE_MAP(mode, pid);
  };
};

struct CrashWhile {
  struct Request {
    std::string path;
    MSGPACK_DEFINE_MAP(path);
  };
  using Reply = Crash::Reply;
};

struct Who {
  using Request = cluster::empty;
  struct Reply {
    std::int64_t pid = 0;
    std::int64_t seen = 0;  // messages this activation handled, this one included
    MSGPACK_DEFINE_MAP(pid, seen);
  };
};

namespace {

// Volatile keeps the compiler from proving the faults away.
volatile int* volatile null_target = nullptr;
volatile bool spin = true;

void misbehave(const std::string& mode) {
  if (mode == "abort") std::abort();
  if (mode == "segfault") *null_target = 1;
  if (mode == "loop")
    while (spin) {
    }
  if (mode == "alloc") {
    std::vector<char*> hoard;
    while (spin) {
      char* block = static_cast<char*>(std::malloc(16 << 20));
      if (block == nullptr) std::abort();  // what most C code does with a failed malloc
      std::memset(block, 1, 16 << 20);     // touched: resident, not just reserved
      hoard.push_back(block);
    }
  }
}

}  // namespace

class Faulty {
 public:
  Crash::Reply crash(const Crash::Request& request, cluster::context&) {
    ++seen_;
    misbehave(request.mode);
    return {request.mode, static_cast<std::int64_t>(::getpid())};
  }
  CrashWhile::Reply crash_while(const CrashWhile::Request& request, cluster::context&) {
    ++seen_;
    if (!request.path.empty() && ::access(request.path.c_str(), F_OK) == 0) std::abort();
    return {"ok", static_cast<std::int64_t>(::getpid())};
  }
  Who::Reply who(const Who::Request&, cluster::context&) {
    return {static_cast<std::int64_t>(::getpid()), ++seen_};
  }

 private:
  std::int64_t seen_ = 0;
};

CLUSTER_PLUGIN(cluster::plugin("faulty").version("1.0.0"),
               cluster::entity<Faulty>("Faulty")
                   .rpc<Crash>("Crash", &Faulty::crash, cluster::persisted)
                   .rpc<Crash>("CrashVolatile", &Faulty::crash)
                   .rpc<CrashWhile>("CrashWhile", &Faulty::crash_while, cluster::persisted)
                   .rpc<Who>("Who", &Faulty::who))
