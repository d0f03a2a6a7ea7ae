#include "cluster/storage/message_store.hpp"

namespace cluster {

namespace {
failure no_entity_state(const std::string& backend) {
  return failure{errc::storage_error, "the " + backend + " store keeps no entity state"};
}
}  // namespace

// The defaults of a backend without entity state: refused at once.
void message_store::load_state(std::string, std::string, state_done done) {
  done(no_entity_state(backend_name()));
}
void message_store::save_state(state_write, write_done done) {
  done(no_entity_state(backend_name()));
}
void message_store::complete_with_state(std::int64_t, reply_msg, bool, state_write,
                                        write_done done) {
  done(no_entity_state(backend_name()));
}
void message_store::remember_kept(std::string, std::int32_t, kept_entity, write_done done) {
  done(no_entity_state(backend_name()));
}
void message_store::forget_kept(kept_entity, write_done done) {
  done(no_entity_state(backend_name()));
}
void message_store::kept_entities(std::string, std::int32_t, kept_done done) {
  done(no_entity_state(backend_name()));
}
std::int64_t message_store::lock_epoch(std::string_view, std::int32_t) const { return 0; }

}  // namespace cluster
