// Ledger: a stateful test entity. Its state is a total and the notes that made it; RPCs
// change it in every way the runner must handle (volatile, persisted, coroutine, failing,
// clearing, too large, read-only by declaration) and report how it was activated.
#include <cluster/sdk.hpp>
#include <stdexcept>

struct LedgerState {
  std::int64_t total = 0;
  std::vector<std::string> notes;
  MSGPACK_DEFINE_MAP(total, notes);
};

struct Add {
  struct Request {
    std::int64_t amount = 1;
    std::string note;
    std::int64_t sleep_ms = 0;  ///< coroutine RPCs: wait this long before changing the state
    MSGPACK_DEFINE_MAP(amount, note, sleep_ms);
  };
  struct Reply {
    std::int64_t total = 0;
    std::int64_t activation = 0;  ///< which activation of this process ran it (1, 2, ...)
    MSGPACK_DEFINE_MAP(total, activation);
  };
};

struct Grow {
  struct Request {
    std::int64_t bytes = 0;
    MSGPACK_DEFINE_MAP(bytes);
  };
  using Reply = Add::Reply;
};

struct Clear {
  using Request = cluster::empty;
  using Reply = Add::Reply;
};

struct Show {
  using Request = cluster::empty;
  struct Reply {
    std::int64_t total = 0;
    std::vector<std::string> notes;
    std::int64_t activation = 0;
    MSGPACK_DEFINE_MAP(total, notes, activation);
  };
};

namespace {
std::int64_t activations = 0;
}  // namespace

class Ledger : public cluster::stateful<LedgerState> {
 public:
  Add::Reply add(const Add::Request& r, cluster::context&) {
    state().total += r.amount;
    state().notes.push_back(r.note);
    return {state().total, activation_};
  }
  /// Changes the state, then fails: nothing of the change may stay.
  Add::Reply add_then_fail(const Add::Request& r, cluster::context&) {
    state().total += r.amount;
    state().notes.push_back(r.note);
    throw cluster::app_error("Refused", "changed the state, then failed");
  }
  cluster::task<Add::Reply> add_later(const Add::Request& r, cluster::context& ctx) {
    const std::int64_t amount = r.amount;
    const std::string note = r.note;
    co_await ctx.sleep_ms(r.sleep_ms);
    state().total += amount;
    state().notes.push_back(note);
    co_return Add::Reply{state().total, activation_};
  }
  Add::Reply clear(const cluster::empty&, cluster::context&) {
    clear_state();
    return {0, activation_};
  }
  Add::Reply grow(const Grow::Request& r, cluster::context&) {
    state().notes.push_back(std::string(static_cast<std::size_t>(r.bytes), 'x'));
    return {state().total, activation_};
  }
  Show::Reply show(const Show::Request&, cluster::context&) {
    return {state().total, state().notes, activation_};
  }

 private:
  std::int64_t activation_ = ++activations;
};

CLUSTER_PLUGIN(cluster::entity<Ledger>("Ledger")
                   .rpc<Add>("Add", &Ledger::add)
                   .rpc<Add>("AddPersisted", &Ledger::add, cluster::persisted)
                   .rpc<Add>("AddThenFail", &Ledger::add_then_fail)
                   .rpc<Add>("AddLater", &Ledger::add_later)
                   .rpc<Add>("AddLaterPersisted", &Ledger::add_later, cluster::persisted)
                   .rpc<Clear>("Clear", &Ledger::clear)
                   .rpc<Grow>("Grow", &Ledger::grow)
                   .rpc<Show>("Show", &Ledger::show))
