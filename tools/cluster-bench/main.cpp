// cluster-bench: drives a proxy with calls and reports throughput, latency and errors.
//
//   cluster-bench [--proxy H:P] [--connections N] [--in-flight M] [--entities K]
//                 [--entity-type T] [--rpc R] [--payload JSON | --payload-size BYTES]
//                 [--pick round-robin|random] [--duration-s S] [--warmup-s S]
//                 [--timeout-ms MS] [--threads T] [--cpu-pid PID]... [--json]
//                 [--stream [--credit C]]
//
// N connections each keep M requests in flight (N x M in total): a call's reply starts the
// next call on the same connection at once (closed loop). Latency is measured per call with
// steady_clock from just before encoding the request to the reply's callback. Everything
// that completes during the warm-up is discarded; the measurement window is the following
// --duration-s seconds. Requests carry no primary key, so the router gives every
// persisted call a fresh one (no deduplication hits).
//
// Threads: by default one io_context on this thread serves every connection; --threads T
// spreads the connections over T threads, each with its own io_context and histogram.
//
// --stream: the RPC streams (e.g. --rpc GreetMany --payload '{"name":"b","count":1000}');
// each call acks every chunk as it arrives, and the report adds the items per second
// received in the window. A call is one whole stream; its latency is to the final reply.

#include <spdlog/spdlog.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <atomic>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <iostream>
#include <map>
#include <nlohmann/json.hpp>
#include <thread>

#include "cluster/net/connection.hpp"
#include "cluster/process/config.hpp"
#include "cluster/process/defaults.hpp"
#include "cluster/process/tool_credentials.hpp"
#include "latency_histogram.hpp"
#include "process_cpu.hpp"

namespace {

using namespace cluster;
using bench::latency_histogram;
using json = nlohmann::json;

struct options {
  std::string proxy;  ///< defaults::proxy_address() unless --proxy or CLUSTER_PROXY_ADDRESS
  std::size_t connections = 1;
  std::size_t in_flight = 1;  ///< per connection
  std::uint64_t entities = 1000;
  std::string entity_type = "Greeter";
  std::string rpc = "GreetVolatile";
  std::string payload_json = R"({"name":"bench"})";
  std::optional<std::size_t> payload_size;  ///< a {"name": <this many bytes>} payload
  bool random_pick = false;
  std::string id_prefix = "bench-";
  double duration_s = 10;
  double warmup_s = 2;
  milliseconds timeout{10000};
  std::size_t threads = 1;
  bool as_json = false;
  bool stream = false;
  std::uint32_t credit = 0;    ///< --credit: a stream's window (0: the protocol's default)
  std::vector<long> cpu_pids;  ///< processes (and descendants) whose CPU time is reported
  tool_credentials credentials;
  std::shared_ptr<const security_context> security;  ///< from `credentials`, once at start
};

int fail(const std::string& message) {
  std::cerr << "cluster-bench: error: " << message << "\n";
  return 1;
}

// Counters of one thread; merged at the end.
struct results {
  latency_histogram latency;
  std::uint64_t ok = 0;
  std::uint64_t items = 0;                      // stream items received in the window
  std::map<std::string, std::uint64_t> errors;  // by errc name
  std::string last_error;
  void merge(const results& other) {
    latency.merge(other.latency);
    ok += other.ok;
    items += other.items;
    for (const auto& [kind, n] : other.errors) errors[kind] += n;
    if (!other.last_error.empty()) last_error = other.last_error;
  }
  std::uint64_t error_count() const {
    std::uint64_t n = 0;
    for (const auto& [kind, count] : errors) n += count;
    return n;
  }
};

class worker;

// One connection to the proxy and its request slots. Each slot owns its request (only
// the entity id changes between calls) and keeps exactly one call in flight.
struct bench_connection {
  struct slot {
    bench_connection* owner = nullptr;
    request_msg request;
    steady_clock::time_point started;
    bool busy = false;
    std::uint64_t call_id = 0;  // of the stream in flight
  };
  worker* group = nullptr;
  connection_ptr conn;
  std::vector<slot> slots;
  bool connecting = false;
};

// The connections of one thread and their io_context.
class worker {
 public:
  worker(const options& opts, const request_msg& prototype, host_port proxy,
         std::size_t connections, std::uint64_t first_entity)
      : opts_(opts),
        proxy_(std::move(proxy)),
        next_entity_(first_entity),
        random_state_(0x9e3779b97f4a7c15ULL ^ (first_entity + 1)) {
    prefix_size_ = prototype.entity_id.size();
    connections_.resize(connections);
    for (auto& c : connections_) {
      c.group = this;
      c.slots.resize(opts_.in_flight);
      for (auto& s : c.slots) {
        s.owner = &c;
        s.request = prototype;
        s.request.entity_id.reserve(prefix_size_ + 24);
      }
    }
  }

  /// Opens every connection; the first failure, empty when all connected.
  std::string connect_all() {
    for (auto& c : connections_) {
      c.connecting = true;
      asio::co_spawn(io_, open(&c, milliseconds(0), false), asio::detached);
    }
    // Not run(): a connected connection keeps reading, so there is always work.
    const auto pending = [this] {
      for (const auto& c : connections_)
        if (c.connecting) return true;
      return false;
    };
    while (pending()) io_.run_one();
    for (auto& c : connections_)
      if (!c.conn) return connect_error_.empty() ? "not connected" : connect_error_;
    return {};
  }

  /// Closed loop from now until `end`; completions in [measure_from, end) are recorded.
  void run(steady_clock::time_point measure_from, steady_clock::time_point end) {
    measure_from_ = measure_from;
    end_ = end;
    for (auto& c : connections_)
      for (auto& s : c.slots) issue(s);
    window_timer_.expires_at(end_);
    window_timer_.async_wait([this](const error_code& ec) {
      if (ec) return;
      stopping_ = true;
      if (busy_ == 0) drain();
    });
    // Calls still out one deadline after the window are abandoned.
    straggler_timer_.expires_at(end_ + opts_.timeout + milliseconds(500));
    straggler_timer_.async_wait([this](const error_code& ec) {
      if (!ec) drain();
    });
    // Returns once every connection is closed and every timer is done.
    io_.run();
  }

  const results& result() const { return results_; }

  void streamed(bench_connection::slot& s, std::size_t count) {
    const auto now = steady_clock::now();
    if (now >= measure_from_ && now < end_) results_.items += count;
    if (s.owner->conn) s.owner->conn->ack(s.call_id, static_cast<std::uint32_t>(count));
  }

  void completed(bench_connection::slot& s, reply_msg&& reply) {
    s.busy = false;
    --busy_;
    const auto now = steady_clock::now();
    if (now >= measure_from_ && now < end_) {
      if (reply.ok()) {
        ++results_.ok;
        results_.latency.record(static_cast<std::uint64_t>(
            std::chrono::duration_cast<std::chrono::nanoseconds>(now - s.started).count()));
      } else {
        ++results_.errors[std::string(to_string(reply.code))];
        results_.last_error = reply.error + ": " + reply.message;
      }
    }
    if (stopping_ || now >= end_) {
      stopping_ = true;
      if (busy_ == 0) drain();
      return;
    }
    auto& c = *s.owner;
    if (!c.conn || !c.conn->is_open()) {
      // The proxy went away: the last slot of the connection to finish reconnects.
      bool idle = true;
      for (const auto& other : c.slots) idle = idle && !other.busy;
      if (idle && !c.connecting) {
        c.connecting = true;
        asio::co_spawn(io_, open(&c, milliseconds(100), true), asio::detached);
      }
      return;
    }
    issue(s);
  }

 private:
  void issue(bench_connection::slot& s) {
    auto& c = *s.owner;
    if (!c.conn || !c.conn->is_open()) return;
    // The entity id is rewritten in place: no allocation once its capacity is reserved.
    std::uint64_t entity;
    if (opts_.random_pick) {
      random_state_ ^= random_state_ << 13;
      random_state_ ^= random_state_ >> 7;
      random_state_ ^= random_state_ << 17;
      entity = random_state_ % opts_.entities;
    } else {
      entity = next_entity_++ % opts_.entities;
    }
    char digits[24];
    const auto end = std::to_chars(digits, digits + sizeof(digits), entity).ptr;
    s.request.entity_id.resize(prefix_size_);
    s.request.entity_id.append(digits, end);
    s.busy = true;
    ++busy_;
    s.started = steady_clock::now();
    auto* slot = &s;
    auto done = [slot](reply_msg&& reply) {
      slot->owner->group->completed(*slot, std::move(reply));
    };
    if (!opts_.stream) {
      c.conn->call(message_kind::request, s.request, opts_.timeout, std::move(done));
      return;
    }
    s.call_id = c.conn->call_stream(
        message_kind::request, s.request, opts_.credit, opts_.timeout,
        [slot](std::vector<bytes>&& items) { slot->owner->group->streamed(*slot, items.size()); },
        std::move(done));
  }

  // Connects `c` after `delay`; with `retry`, tries again until the window ends and then
  // starts the connection's slots.
  awaitable<void> open(bench_connection* c, milliseconds delay, bool retry) {
    while (!stopping_) {
      if (delay.count() > 0) {
        auto sleep = sleep_for(delay);
        co_await std::move(sleep);
        if (stopping_) break;
      }
      hello_msg hello{protocol_version, "client", "cluster-bench"};
      connection_limits limits;
      limits.security = opts_.security;
      connection::message_handler ignore = [](const connection_ptr&, envelope&&) {};
      std::function<void()> on_close;
      auto connect = connect_to(proxy_, hello, limits, milliseconds(3000), ignore, on_close);
      auto connected = co_await std::move(connect);
      if (connected && stopping_) {
        connected.value()->close();
        break;
      }
      c->conn = connected ? connected.value() : nullptr;
      if (c->conn) {
        if (retry)
          for (auto& s : c->slots) issue(s);
        break;
      }
      connect_error_ = connected.error().message;
      if (!retry) break;
      if (steady_clock::now() >= measure_from_) {
        ++results_.errors[std::string(to_string(errc::unavailable))];
        results_.last_error = connected.error().message;
      }
    }
    c->connecting = false;
  }

  // The window is over and nothing is in flight (or what is left is abandoned): close
  // everything so that io_.run() returns.
  void drain() {
    stopping_ = true;
    window_timer_.cancel();
    straggler_timer_.cancel();
    for (auto& c : connections_)
      if (c.conn) c.conn->close();
  }

  const options& opts_;
  host_port proxy_;
  asio::io_context io_{1};
  std::vector<bench_connection> connections_;
  std::size_t prefix_size_ = 0;
  std::uint64_t next_entity_;
  std::uint64_t random_state_;
  asio::steady_timer window_timer_{io_};
  asio::steady_timer straggler_timer_{io_};
  std::size_t busy_ = 0;
  bool stopping_ = false;
  steady_clock::time_point measure_from_;
  steady_clock::time_point end_;
  results results_;
  std::string connect_error_;
};

double ms(std::uint64_t ns) { return std::round(static_cast<double>(ns) / 1e3) / 1e3; }

std::optional<bytes> build_payload(const options& opts, std::string& error) {
  json body;
  if (opts.payload_size) {
    body = {{"name", std::string(*opts.payload_size, 'x')}};
  } else {
    try {
      body = json::parse(opts.payload_json);
    } catch (const json::parse_error& e) {
      error = std::string("--payload is not JSON: ") + e.what();
      return std::nullopt;
    }
  }
  const auto packed = json::to_msgpack(body);
  return bytes(packed.begin(), packed.end());
}

result<std::size_t> positive(const std::string& flag, const std::string& text) {
  const auto value = parse_number<std::size_t>(text);
  if (!value || *value == 0)
    return failure{errc::invalid_request, flag + " needs a positive integer, got '" + text + "'"};
  return *value;
}

result<double> seconds(const std::string& flag, const std::string& text, bool allow_zero) {
  const auto value = parse_number<double>(text);
  if (!value || *value < 0 || (!allow_zero && *value == 0) || !std::isfinite(*value))
    return failure{errc::invalid_request, flag + " needs a number of seconds, got '" + text + "'"};
  return *value;
}

// The command line, with CLI11. Numbers arrive as text and go through std::from_chars
// (parse_number), so a bad one is reported as before: exit 1 naming the flag.
struct bench_command_line {
  CLI::App app{"Drives a proxy with calls and reports throughput, latency and errors.",
               "cluster-bench"};
  std::map<std::string, std::string> numbers;  // flag → text, for the flags given

  explicit bench_command_line(options& opts) {
    app.add_option(
           "--proxy", opts.proxy,
           "proxy to call (default " + defaults::proxy_address() + ", or CLUSTER_PROXY_ADDRESS)")
        ->type_name("HOST:PORT");
    number("--connections", "N", "connections to the proxy (default 1)");
    number("--in-flight", "M",
           "requests in flight per connection (default 1); N x M in flight in total");
    number("--entities", "K", "distinct entity ids bench-0 .. bench-(K-1) (default 1000)");
    app.add_option("--pick", pick_, "how each call picks its entity (default round-robin)")
        ->type_name("round-robin|random");
    app.add_option("--id-prefix", opts.id_prefix, "entity id prefix (default bench-)")
        ->type_name("P");
    app.add_option("--entity-type", opts.entity_type, "(default Greeter)")->type_name("T");
    app.add_option("--rpc", opts.rpc, "(default GreetVolatile; Greet is the persisted one)")
        ->type_name("R");
    app.add_option("--payload", opts.payload_json, "request payload (default {\"name\":\"bench\"})")
        ->type_name("JSON");
    number("--payload-size", "BYTES", "payload {\"name\": <BYTES x 'x'>} instead of --payload");
    number("--duration-s", "S", "measured seconds (default 10)");
    number("--warmup-s", "S", "seconds of calls before measuring (default 2)");
    number("--timeout-ms", "MS", "deadline of each call (default 10000)");
    number("--threads", "T", "client threads, each with its own io_context (default 1)");
    app.add_flag("--json", opts.as_json, "print one JSON object instead of text");
    app.add_flag("--stream", opts.stream, "the RPC streams: also report items per second");
    number("--credit", "C", "--stream: items acked ahead (default 32, at most 65536)");
    app.add_option("--key-file", opts.credentials.key_file,
                   "private key (default: environment, SST links, ./.local/credentials)")
        ->type_name("FILE");
    app.add_option("--trust-file", opts.credentials.trust_file, "trust list")->type_name("FILE");
    app.add_option("--tls", opts.credentials.tls, "on: connect over TLS (default: as the key)")
        ->check(CLI::IsMember({"on", "off"}));
    app.add_option("--cpu-pid", opts.cpu_pids,
                   "report the CPU time per call of this process and its descendants over the "
                   "measured window (repeatable: the cluster's processes)")
        ->type_name("PID");
  }

  // Applies the numbers and --pick to `opts` once parsed.
  result<void> apply(options& opts) const {
    for (const auto& [flag, text] : numbers) {
      if (flag == "--duration-s") {
        BOOST_OUTCOME_TRY(duration, seconds(flag, text, false));
        opts.duration_s = duration;
      } else if (flag == "--warmup-s") {
        BOOST_OUTCOME_TRY(warmup, seconds(flag, text, true));
        opts.warmup_s = warmup;
      } else {
        BOOST_OUTCOME_TRY(value, positive(flag, text));
        if (flag == "--connections") opts.connections = value;
        if (flag == "--in-flight") opts.in_flight = value;
        if (flag == "--entities") opts.entities = value;
        if (flag == "--payload-size") opts.payload_size = value;
        if (flag == "--timeout-ms") opts.timeout = milliseconds(value);
        if (flag == "--threads") opts.threads = value;
        if (flag == "--credit")
          opts.credit = static_cast<std::uint32_t>(std::min<std::size_t>(value, max_stream_credit));
      }
    }
    if (!pick_.empty()) {
      if (pick_ != "round-robin" && pick_ != "random")
        return failure{errc::invalid_request,
                       "--pick is round-robin or random, got '" + pick_ + "'"};
      opts.random_pick = pick_ == "random";
    }
    return success();
  }

 private:
  void number(const std::string& flag, const std::string& type, const std::string& help) {
    app.add_option_function<std::string>(
           flag, [this, flag](const std::string& text) { numbers[flag] = text; }, help)
        ->type_name(type);
  }
  std::string pick_;
};

}  // namespace

int main(int argc, char** argv) {
  spdlog::set_level(spdlog::level::off);
  options opts;
  opts.proxy = defaults::proxy_address();
  if (const char* proxy = std::getenv("CLUSTER_PROXY_ADDRESS")) opts.proxy = proxy;
  bench_command_line line(opts);
  try {
    line.app.parse(argc, argv);
  } catch (const CLI::CallForHelp&) {  // CLI11 reports --help and errors only by throwing
    std::cout << line.app.help();
    return 0;
  } catch (const CLI::ParseError& e) {
    std::cerr << "cluster-bench: " << e.what() << "\n" << line.app.help();
    return 2;
  }
  if (auto applied = line.apply(opts); !applied) return fail(applied.error().message);
  if (opts.threads > opts.connections)
    return fail("--threads (" + std::to_string(opts.threads) + ") exceeds --connections (" +
                std::to_string(opts.connections) + ")");
  auto security = load_tool_credentials(opts.credentials);
  if (!security) return fail("credentials: " + security.error().message);
  opts.security = security.value();
  const auto proxy = parse_host_port(opts.proxy);
  if (!proxy) return fail("--proxy: expected host:port, got '" + opts.proxy + "'");
  std::string error;
  const auto payload = build_payload(opts, error);
  if (!payload) return fail(error);

  request_msg prototype;
  prototype.entity_type = opts.entity_type;
  prototype.entity_id = opts.id_prefix;
  prototype.rpc = opts.rpc;
  prototype.payload = *payload;
  prototype.timeout_ms = static_cast<std::uint32_t>(opts.timeout.count());

  // Connections are dealt to threads round-robin; each thread starts its round-robin
  // walk over the entities at a different offset.
  std::vector<std::unique_ptr<worker>> workers;
  for (std::size_t t = 0; t < opts.threads; ++t) {
    const std::size_t mine =
        opts.connections / opts.threads + (t < opts.connections % opts.threads);
    workers.push_back(
        std::make_unique<worker>(opts, prototype, *proxy, mine, opts.entities * t / opts.threads));
  }
  for (auto& w : workers)
    if (auto connect_error = w->connect_all(); !connect_error.empty()) return fail(connect_error);

  const auto start = steady_clock::now();
  const auto measure_from = start + std::chrono::duration_cast<steady_clock::duration>(
                                        std::chrono::duration<double>(opts.warmup_s));
  const auto end = measure_from + std::chrono::duration_cast<steady_clock::duration>(
                                      std::chrono::duration<double>(opts.duration_s));
  // CPU of the cluster's processes over the measured window, sampled from its own thread.
  double cpu_at_start = 0, cpu_at_end = 0;
  std::thread cpu_sampler;
  if (!opts.cpu_pids.empty())
    cpu_sampler = std::thread([&] {
      std::this_thread::sleep_until(measure_from);
      cpu_at_start = bench::cpu_seconds(opts.cpu_pids);
      std::this_thread::sleep_until(end);
      cpu_at_end = bench::cpu_seconds(opts.cpu_pids);
    });
  if (workers.size() == 1) {
    workers[0]->run(measure_from, end);
  } else {
    std::vector<std::thread> threads;
    for (auto& w : workers)
      threads.emplace_back([w = w.get(), measure_from, end] { w->run(measure_from, end); });
    for (auto& t : threads) t.join();
  }

  if (cpu_sampler.joinable()) cpu_sampler.join();
  results total;
  for (const auto& w : workers) total.merge(w->result());
  // Microseconds of cluster CPU (every --cpu-pid and its descendants) per answered call.
  const double cpu_us_per_call =
      total.ok > 0 ? (cpu_at_end - cpu_at_start) * 1e6 / static_cast<double>(total.ok) : 0;
  const double rps = static_cast<double>(total.ok) / opts.duration_s;
  const double items_per_s = static_cast<double>(total.items) / opts.duration_s;
  const auto& h = total.latency;
  const std::uint64_t errors = total.error_count();
  const std::size_t in_flight = opts.connections * opts.in_flight;

  if (opts.as_json) {
    json out = {{"proxy", opts.proxy},
                {"entity_type", opts.entity_type},
                {"rpc", opts.rpc},
                {"in_flight", in_flight},
                {"connections", opts.connections},
                {"in_flight_per_connection", opts.in_flight},
                {"entities", opts.entities},
                {"pick", opts.random_pick ? "random" : "round-robin"},
                {"payload_bytes", payload->size()},
                {"threads", opts.threads},
                {"duration_s", opts.duration_s},
                {"warmup_s", opts.warmup_s},
                {"ok", total.ok},
                {"rps", std::round(rps * 10) / 10},
                {"mean_ms", std::round(h.mean() / 1e3) / 1e3},
                {"p50_ms", ms(h.quantile(0.5))},
                {"p90_ms", ms(h.quantile(0.9))},
                {"p99_ms", ms(h.quantile(0.99))},
                {"p999_ms", ms(h.quantile(0.999))},
                {"max_ms", ms(h.max())},
                {"errors", errors},
                {"errors_by_kind", total.errors}};
    if (opts.stream) {
      out["items"] = total.items;
      out["items_per_s"] = std::round(items_per_s * 10) / 10;
    }
    if (!opts.cpu_pids.empty()) out["cpu_us_per_call"] = std::round(cpu_us_per_call * 100) / 100;
    std::cout << out.dump() << "\n";
  } else {
    std::printf(
        "%s.%s via %s: %zu connection(s) x %zu in flight = %zu, %llu entities (%s), "
        "%zu-byte payload, %.1f s after %.1f s warm-up\n",
        opts.entity_type.c_str(), opts.rpc.c_str(), opts.proxy.c_str(), opts.connections,
        opts.in_flight, in_flight, static_cast<unsigned long long>(opts.entities),
        opts.random_pick ? "random" : "round-robin", payload->size(), opts.duration_s,
        opts.warmup_s);
    std::printf("requests/s  %.1f  (%llu ok, %llu errors)\n", rps,
                static_cast<unsigned long long>(total.ok), static_cast<unsigned long long>(errors));
    if (opts.stream)
      std::printf("items/s     %.1f  (%llu items)\n", items_per_s,
                  static_cast<unsigned long long>(total.items));
    std::printf("latency ms  p50 %.3f  p90 %.3f  p99 %.3f  p99.9 %.3f  max %.3f  mean %.3f\n",
                ms(h.quantile(0.5)), ms(h.quantile(0.9)), ms(h.quantile(0.99)),
                ms(h.quantile(0.999)), ms(h.max()), h.mean() / 1e6);
    if (!opts.cpu_pids.empty())
      std::printf("cluster cpu %.2f us per call (processes %s and their descendants)\n",
                  cpu_us_per_call,
                  [&] {
                    std::string pids;
                    for (long pid : opts.cpu_pids)
                      pids += (pids.empty() ? "" : ",") + std::to_string(pid);
                    return pids;
                  }()
                      .c_str());
    if (errors > 0) {
      std::printf("errors     ");
      for (const auto& [kind, n] : total.errors)
        std::printf(" %s %llu", kind.c_str(), static_cast<unsigned long long>(n));
      std::printf("  (last: %s)\n", total.last_error.c_str());
    }
  }
  if (total.ok == 0) {
    return fail(errors > 0 ? "every call failed (" + std::to_string(errors) +
                                 " errors; last: " + total.last_error + ")"
                           : "no call completed in the measurement window");
  }
  return 0;
}
