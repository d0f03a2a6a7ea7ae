#include "top.hpp"

#include <sys/ioctl.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <ctime>
#include <nlohmann/json.hpp>
#include <sstream>
#include <thread>

#include "cluster/http/http.hpp"

namespace clusterctl {
namespace {

using nlohmann::json;

double number(const json& j, const char* key) {
  const auto it = j.find(key);
  return it != j.end() && it->is_number() ? it->get<double>() : 0.0;
}

std::string text(const json& j, const char* key) {
  const auto it = j.find(key);
  return it != j.end() && it->is_string() ? it->get<std::string>() : std::string();
}

std::string fixed(double v, int decimals) {
  char out[32];
  std::snprintf(out, sizeof out, "%.*f", decimals, v);
  return out;
}

std::string optional_ms(const json& j, const char* key) {
  const auto it = j.find(key);
  return it != j.end() && it->is_number() ? fixed(it->get<double>(), 3) : "-";
}

std::string cell(std::string value, std::size_t width) {
  if (value.size() > width) value = value.substr(0, width - 1) + "~";
  return value + std::string(width - value.size() + 1, ' ');
}

std::string right(const std::string& value, std::size_t width) {
  if (value.size() >= width) return value + " ";
  return std::string(width - value.size(), ' ') + value + " ";
}

int terminal_width() {
  winsize size{};
  if (isatty(STDOUT_FILENO) && ioctl(STDOUT_FILENO, TIOCGWINSZ, &size) == 0 && size.ws_col > 40)
    return size.ws_col;
  return 100;
}

}  // namespace

std::string render_top(const std::string& api_json, int width) {
  const auto doc = json::parse(api_json, nullptr, false);
  if (doc.is_discarded() || !doc.is_object()) return "the manager's /api/cluster is not JSON\n";
  std::ostringstream out;
  const auto& runners = doc.value("runners", json::array());
  const auto& groups = doc.value("groups", json::array());
  std::size_t healthy = 0, shards = 0, assigned = 0;
  double calls = 0, errors = 0;
  for (const auto& r : runners) {
    healthy += r.value("healthy", false) ? 1 : 0;
    const auto& m = r.value("metrics", json::object());
    calls += number(m, "calls_per_s");
    errors += number(m, "errors_per_s");
  }
  for (const auto& g : groups)
    for (const auto& owner : g.value("owners", json::array())) {
      ++shards;
      assigned += owner.is_number_integer() && owner.get<int>() >= 0 ? 1 : 0;
    }
  out << "cluster  manager " << text(doc, "manager") << "  storage " << text(doc, "storage")
      << "  runners " << healthy << "/" << runners.size() << " healthy  shards " << assigned << "/"
      << shards << " assigned  " << fixed(calls, 0) << " calls/s  " << fixed(errors, 1)
      << " errors/s\n\n";

  out << cell("RUNNER", 12) << cell("ADDRESS", 21) << right("SHARDS", 6) << right("CALLS/S", 9)
      << right("ERR/S", 7) << right("CPU", 5) << right("RSS_MB", 7) << right("ACTIVE", 8)
      << right("MAILBOX", 7) << right("CONNS", 5) << right("RESTARTS", 8) << "\n";
  for (const auto& r : runners) {
    const auto& m = r.value("metrics", json::object());
    const bool ok = m.value("ok", false);
    out << cell((r.value("healthy", false) ? "" : "!") + text(r, "name"), 12)
        << cell(text(r, "address"), 21) << right(fixed(number(r, "shards"), 0), 6);
    if (ok) {
      out << right(fixed(number(m, "calls_per_s"), 0), 9)
          << right(fixed(number(m, "errors_per_s"), 1), 7)
          << right(fixed(number(m, "cpu_cores"), 2), 5)
          << right(fixed(number(m, "rss_bytes") / 1048576.0, 1), 7)
          << right(fixed(number(m, "active_entities"), 0), 8)
          << right(fixed(number(m, "mailbox_depth"), 0), 7)
          << right(fixed(number(m, "connections"), 0), 5)
          << right(fixed(number(m, "plugin_restarts"), 0), 8);
    } else {
      out << "  metrics unavailable: " << text(m, "error");
    }
    out << "\n";
  }

  out << "\n"
      << cell("ENTITY TYPE / RPC", 30) << cell("GROUP", 10) << right("CALLS/S", 9)
      << right("ERR/S", 7) << right("P50_MS", 8) << right("P99_MS", 8) << right("ACTIVE", 8)
      << right("MAILBOX", 7) << "\n";
  for (const auto& t : doc.value("entity_types", json::array())) {
    out << cell(text(t, "name"), 30) << cell(text(t, "group"), 10)
        << right(fixed(number(t, "calls_per_s"), 0), 9)
        << right(fixed(number(t, "errors_per_s"), 1), 7) << right(optional_ms(t, "p50_ms"), 8)
        << right(optional_ms(t, "p99_ms"), 8) << right(fixed(number(t, "active_entities"), 0), 8)
        << right(fixed(number(t, "mailbox_depth"), 0), 7) << "\n";
    for (const auto& rpc : t.value("rpcs", json::array())) {
      if (number(rpc, "calls_per_s") <= 0) continue;  // idle RPCs would crowd the view
      out << cell("  ." + text(rpc, "name"), 30) << cell("", 10)
          << right(fixed(number(rpc, "calls_per_s"), 0), 9)
          << right(fixed(number(rpc, "errors_per_s"), 1), 7) << right(optional_ms(rpc, "p50_ms"), 8)
          << right(optional_ms(rpc, "p99_ms"), 8) << "\n";
    }
  }

  out << "\n";
  for (const auto& b : doc.value("persisted_backlog", json::array()))
    out << "persisted backlog " << text(b, "group") << ": " << fixed(number(b, "pending"), 0)
        << "   ";
  const auto& dead = doc.value("dead_letters", json::object());
  out << "dead letters: " << fixed(number(dead, "count"), 0) << "\n\nrecent events\n";
  int shown = 0;
  for (const auto& e : doc.value("events", json::array())) {
    if (++shown > 8) break;
    const auto ms = static_cast<std::time_t>(number(e, "time_ms") / 1000);
    std::tm local{};
    localtime_r(&ms, &local);
    char when[16];
    std::strftime(when, sizeof when, "%H:%M:%S", &local);
    std::string line = std::string(when) + "  " + cell(text(e, "kind"), 16) + text(e, "message");
    if (static_cast<int>(line.size()) > width)
      line = line.substr(0, static_cast<std::size_t>(width));
    out << line << "\n";
  }
  return out.str();
}

int top_command(const top_options& options) {
  cluster::http::fetch_options fetch;
  fetch.timeout = std::chrono::milliseconds(2000);
  if (!options.token.empty())
    fetch.headers.emplace_back("Authorization", "Bearer " + options.token);
  const bool tty = isatty(STDOUT_FILENO) != 0;
  const auto url = options.admin_url + "/api/cluster";
  for (int frame = 0; options.frames == 0 || frame < options.frames; ++frame) {
    const auto started = std::chrono::steady_clock::now();
    auto got = cluster::http::fetch_blocking(url, fetch);
    std::string view;
    if (!got || got.value().status != 200) {
      const auto why = !got
                           ? got.error().message
                           : "HTTP " + std::to_string(got.value().status) + ": " + got.value().body;
      if (frame == 0) {
        std::fprintf(stderr, "error: Unavailable: %s: %s\n", url.c_str(), why.c_str());
        return 1;
      }
      view = "manager unreachable (" + url + "): " + why + "\n";
    } else {
      view = render_top(got.value().body, terminal_width());
    }
    if (tty) std::fputs("\x1b[H\x1b[2J", stdout);  // home and clear: a refreshed screen
    std::fputs(view.c_str(), stdout);
    if (!tty) std::fputs("\n", stdout);
    std::fflush(stdout);
    if (options.frames != 0 && frame + 1 >= options.frames) break;
    std::this_thread::sleep_until(started + std::chrono::seconds(1));
  }
  return 0;
}

}  // namespace clusterctl
