// The fingerprint that binds a primary key to its request: stable across versions (it is
// stored), and different whenever the entity, the RPC or the payload differ, however the
// bytes are split between the fields.
#include "cluster/storage/request_fingerprint.hpp"

#include <gtest/gtest.h>

#include <cstdio>
#include <thread>

namespace cluster {
namespace {

request_msg request_of(std::string type, std::string id, std::string rpc, bytes payload) {
  request_msg request;
  request.entity_type = std::move(type);
  request.entity_id = std::move(id);
  request.rpc = std::move(rpc);
  request.payload = std::move(payload);
  return request;
}

std::string hex(const request_fingerprint& fingerprint) {
  std::string out;
  char digits[3];
  for (auto byte : fingerprint) {
    std::snprintf(digits, sizeof digits, "%02x", byte);
    out += digits;
  }
  return out;
}

const bytes alice = {0x81, 0xa4, 'n', 'a', 'm', 'e', 0xa5, 'A', 'l', 'i', 'c', 'e'};

TEST(request_fingerprint, is_the_documented_sha256_of_the_length_prefixed_fields) {
  // SHA-256 of "cluster-request-fingerprint-v1", "Greeter", "alice", "Greet" and the payload,
  // each after its length as 8 bytes little-endian (computed independently with Python's
  // hashlib). Stored fingerprints depend on it: a change here breaks every stored key.
  EXPECT_EQ(hex(fingerprint_of(request_of("Greeter", "alice", "Greet", alice))),
            "1565b549b776f71dbd39ad057e02bdd6df0fc63e322bd347cc2c3f51dbf5b144");
}

TEST(request_fingerprint, ignores_what_is_not_the_request_itself) {
  auto request = request_of("Greeter", "alice", "Greet", alice);
  const auto plain = fingerprint_of(request);
  request.primary_key = "k1";
  request.persisted = true;
  request.timeout_ms = 500;
  request.deliver_at_ms = 1234;
  EXPECT_EQ(fingerprint_of(request), plain);
}

TEST(request_fingerprint, differs_for_another_entity_rpc_or_payload) {
  const auto base = fingerprint_of(request_of("Greeter", "alice", "Greet", alice));
  bytes mallory = {0x81, 0xa4, 'n', 'a', 'm', 'e', 0xa7, 'M', 'a', 'l', 'l', 'o', 'r', 'y'};
  EXPECT_NE(fingerprint_of(request_of("Greeter", "alice", "Greet", mallory)), base);
  EXPECT_NE(fingerprint_of(request_of("Greeter", "bob", "Greet", alice)), base);
  EXPECT_NE(fingerprint_of(request_of("Counter", "alice", "Greet", alice)), base);
  EXPECT_NE(fingerprint_of(request_of("Greeter", "alice", "Wave", alice)), base);
  EXPECT_NE(fingerprint_of(request_of("Greeter", "alice", "Greet", {})), base);
}

TEST(request_fingerprint, does_not_let_bytes_move_between_fields) {
  EXPECT_NE(fingerprint_of(request_of("ab", "c", "r", {})),
            fingerprint_of(request_of("a", "bc", "r", {})));
  EXPECT_NE(fingerprint_of(request_of("t", "id", "rp", {'x'})),
            fingerprint_of(request_of("t", "id", "r", {'p', 'x'})));
  EXPECT_NE(fingerprint_of(request_of("", "", "", {})),
            fingerprint_of(request_of("", "", "", {0x00})));
}

TEST(request_fingerprint, gives_the_same_answer_on_every_thread) {
  const auto request = request_of("Greeter", "alice", "Greet", alice);
  const auto here = fingerprint_of(request);
  request_fingerprint there{};
  std::thread other([&] { there = fingerprint_of(request); });
  other.join();
  EXPECT_EQ(there, here);
  EXPECT_EQ(fingerprint_of(request), here) << "the reused context starts afresh";
}

}  // namespace
}  // namespace cluster
