// Versioned: one plugin built twice (VERSIONED_MAJOR 1 and 2) and deployed under one file
// name, for the swap tests. Every reply names the version that ran it. Version 2 declares an
// RPC more before the others (so every RPC has another index than in version 1), and swaps
// its second type: OnlyInV1 in version 1, OnlyInV2 in version 2.
#include <cluster/sdk.hpp>
#include <string>

#ifndef VERSIONED_MAJOR
#error "build with -DVERSIONED_MAJOR=1 or 2"
#endif

#define VERSIONED_TEXT_(x) #x
#define VERSIONED_TEXT(x) VERSIONED_TEXT_(x)

namespace {

constexpr const char* version_name = VERSIONED_TEXT(VERSIONED_MAJOR) ".0.0";
std::int64_t instances_created = 0;

struct Answer {
  std::string version;
  std::string entity_id;
  std::int64_t instance = 0;  ///< which instance of this version's plugin answered (1, 2...)
  std::int64_t served = 0;    ///< messages this instance served, this one included
  std::string note;
  MSGPACK_DEFINE_MAP(version, entity_id, instance, served, note);
};

struct Version {
  using Request = cluster::empty;
  using Reply = Answer;
};

struct Slow {
  struct Request {
    std::int64_t ms = 0;
    MSGPACK_DEFINE_MAP(ms);
  };
  using Reply = Answer;
};

struct Record {
  struct Request {
    std::string note;
    MSGPACK_DEFINE_MAP(note);
  };
  using Reply = Answer;
};

class Versioned {
 public:
  Versioned() : instance_(++instances_created) {}

  Answer answer(cluster::context& ctx, std::string note = {}) {
    return Answer{version_name, std::string(ctx.entity_id()), instance_, ++served_,
                  std::move(note)};
  }
  Version::Reply version(const Version::Request&, cluster::context& ctx) { return answer(ctx); }
  cluster::task<Slow::Reply> slow(const Slow::Request& request, cluster::context& ctx) {
    co_await ctx.sleep_ms(request.ms);
    co_return answer(ctx);
  }
  Record::Reply record(const Record::Request& request, cluster::context& ctx) {
    return answer(ctx, request.note);
  }

 private:
  std::int64_t instance_;
  std::int64_t served_ = 0;
};

}  // namespace

#if VERSIONED_MAJOR == 1
CLUSTER_PLUGIN(cluster::plugin("versioned").version(version_name),
               cluster::entity<Versioned>("Versioned")
                   .rpc<Version>("Version", &Versioned::version)
                   .rpc<Slow>("Slow", &Versioned::slow)
                   .rpc<Record>("Record", &Versioned::record, cluster::persisted),
               cluster::entity<Versioned>("OnlyInV1").rpc<Version>("Version", &Versioned::version))
#else
CLUSTER_PLUGIN(cluster::plugin("versioned").version(version_name),
               cluster::entity<Versioned>("Versioned")
                   .rpc<Version>("Added", &Versioned::version)
                   .rpc<Version>("Version", &Versioned::version)
                   .rpc<Slow>("Slow", &Versioned::slow)
                   .rpc<Record>("Record", &Versioned::record, cluster::persisted),
               cluster::entity<Versioned>("OnlyInV2").rpc<Version>("Version", &Versioned::version))
#endif
