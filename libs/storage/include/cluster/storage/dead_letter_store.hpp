#pragma once
// Dead letters for operators: listed, replayed and dropped through the manager
// (`clusterctl dead-letters`). Runners dead-letter messages through their message_store.
//
// Every operation completes through its callback, posted to the io_context the store was
// made with. Only shared backends keep dead letters that outlive a runner: the memory backend
// has no dead_letter_store (`make_dead_letter_store` in storage-pg answers nullptr).

#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "cluster/protocol/messages.hpp"
#include "cluster/protocol/result.hpp"

namespace cluster {

class dead_letter_store {
 public:
  using list_done = std::function<void(result<std::vector<dead_letter_info>>)>;
  /// false: there is no dead letter with that id.
  using change_done = std::function<void(result<bool>)>;

  virtual ~dead_letter_store() = default;
  /// Oldest first, at most `limit`.
  virtual void list(std::uint32_t limit, list_done done) = 0;
  /// Deletes the dead letter and its stored reply and queues the message again with no
  /// attempts counted, in one transaction; the shard's lock holder hears of it
  /// (`message_store::on_requeued`) and runs it.
  virtual void replay(std::int64_t id, change_done done) = 0;
  /// Deletes the dead letter; its error reply stays (until the retention purges it).
  virtual void drop(std::int64_t id, change_done done) = 0;

  /// What the dashboard shows of the stored messages: dead letters in all, and messages
  /// waiting to run (stored, not processed, not dead) per shard group.
  struct backlog {
    std::int64_t dead_letters = 0;
    std::map<std::string, std::int64_t> pending;
  };
  using backlog_done = std::function<void(result<backlog>)>;
  virtual void count_backlog(backlog_done done) = 0;
};

}  // namespace cluster
