#include "supervisor/peer_link.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <ifaddrs.h>
#include <net/if.h>
#include <netinet/in.h>
#include <sys/stat.h>
#include <unistd.h>

#include <fmt/format.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>

#include <algorithm>
#include <atomic>
#include <boost/asio.hpp>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <future>
#include <limits>
#include <mutex>
#include <set>
#include <stdexcept>
#include <thread>

#include <spdlog/spdlog.h>

#include "common/random_hex.h"
#include "common/regular_file.h"

namespace lifeline {
namespace asio = boost::asio;
using json = nlohmann::json;
using tcp = asio::ip::tcp;
using Clock = std::chrono::steady_clock;

namespace {

constexpr uint32_t kMaxFrame = 1u << 20;          // any message, once authenticated
constexpr uint32_t kMaxHandshakeFrame = 4096;     // before: challenge, auth, ok
constexpr auto kAuthTimeout = std::chrono::seconds(5);
constexpr auto kConnectTimeout = std::chrono::seconds(1);
constexpr auto kRetryDelay = std::chrono::milliseconds(50);
constexpr size_t kSecretBytes = 32;
constexpr uint64_t kMaxRendezvousBytes = 64 * 1024;

std::string to_hex(const unsigned char* p, size_t n) {
  static const char digits[] = "0123456789abcdef";
  std::string out;
  out.reserve(2 * n);
  for (size_t i = 0; i < n; ++i) {
    out += digits[p[i] >> 4];
    out += digits[p[i] & 0xf];
  }
  return out;
}

int hex_value(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

// `s` as bytes when it is exactly `bytes` bytes of hex.
std::optional<std::vector<unsigned char>> from_hex(const std::string& s, size_t bytes) {
  if (s.size() != 2 * bytes) return std::nullopt;
  std::vector<unsigned char> out(bytes);
  for (size_t i = 0; i < bytes; ++i) {
    int hi = hex_value(s[2 * i]), lo = hex_value(s[2 * i + 1]);
    if (hi < 0 || lo < 0) return std::nullopt;
    out[i] = static_cast<unsigned char>(hi << 4 | lo);
  }
  return out;
}

std::string random_bytes_hex(size_t n) {
  std::vector<unsigned char> buf(n);
  if (RAND_bytes(buf.data(), static_cast<int>(n)) != 1) throw std::runtime_error("RAND_bytes failed");
  return to_hex(buf.data(), n);
}

std::string hmac_hex(const std::vector<unsigned char>& key, const std::string& data) {
  unsigned char mac[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  if (!HMAC(EVP_sha256(), key.data(), static_cast<int>(key.size()), reinterpret_cast<const unsigned char*>(data.data()),
            data.size(), mac, &len))
    throw std::runtime_error("HMAC-SHA256 failed");
  return to_hex(mac, len);
}

// Constant-time comparison of two MACs in hex.
bool mac_equal(const std::string& a, const std::string& b) {
  return a.size() == b.size() && !a.empty() && CRYPTO_memcmp(a.data(), b.data(), a.size()) == 0;
}

bool is_nonce(const json& v) { return v.is_string() && from_hex(v.get<std::string>(), 32).has_value(); }

std::string string_field(const json& msg, const char* key) {
  auto it = msg.find(key);
  return it != msg.end() && it->is_string() ? it->get<std::string>() : std::string();
}

// `msg` framed: 4-byte big-endian length, then the JSON text.
std::string frame_of(const json& msg) {
  std::string body = msg.dump();
  if (body.size() > kMaxFrame)
    throw std::runtime_error(fmt::format("peer message of {} bytes is over the 1 MiB limit", body.size()));
  uint32_t n = static_cast<uint32_t>(body.size());
  std::string out(4, '\0');
  out[0] = static_cast<char>(n >> 24);
  out[1] = static_cast<char>(n >> 16);
  out[2] = static_cast<char>(n >> 8);
  out[3] = static_cast<char>(n);
  return out + body;
}

std::string parent_dir(const std::string& path) {
  auto slash = path.rfind('/');
  if (slash == std::string::npos) return ".";
  if (slash == 0) return "/";
  return path.substr(0, slash);
}

[[noreturn]] void rendezvous_error(const std::string& path, const std::string& what, int err) {
  throw std::runtime_error("rendezvous file " + path + ": " + what + ": " + std::strerror(err));
}

double seconds_since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

}  // namespace

void write_rendezvous(const std::string& path, const Rendezvous& r) {
  json doc = {{"addresses", r.addresses}, {"port", r.port}, {"secret", r.secret_hex}};
  std::string text = doc.dump() + "\n";
  std::string tmp = path + ".tmp-" + random_hex(2);
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
  if (fd < 0) rendezvous_error(path, "create " + tmp, errno);
  auto fail = [&](const std::string& what) {
    int err = errno;
    ::close(fd);
    ::unlink(tmp.c_str());
    rendezvous_error(path, what, err);
  };
  if (::fchmod(fd, 0600) != 0) fail("chmod " + tmp);  // whatever the umask
  size_t done = 0;
  while (done < text.size()) {
    ssize_t n = ::write(fd, text.data() + done, text.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) fail("write " + tmp);
    done += static_cast<size_t>(n);
  }
  if (::fsync(fd) != 0) fail("fsync " + tmp);
  if (::close(fd) != 0) {
    int err = errno;
    ::unlink(tmp.c_str());
    rendezvous_error(path, "close " + tmp, err);
  }
  if (::rename(tmp.c_str(), path.c_str()) != 0) {
    int err = errno;
    ::unlink(tmp.c_str());
    rendezvous_error(path, "rename " + tmp, err);
  }
  std::string dir = parent_dir(path);
  int dfd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd < 0) rendezvous_error(path, "open directory " + dir, errno);
  int rc = ::fsync(dfd);
  int err = errno;
  ::close(dfd);
  if (rc != 0) rendezvous_error(path, "fsync directory " + dir, err);
}

std::optional<Rendezvous> read_rendezvous(const std::string& path) {
  try {
    std::string text, error;
    if (!read_regular_file(path, kMaxRendezvousBytes, text, error)) return std::nullopt;
    json doc = json::parse(text, nullptr, false);
    if (doc.is_discarded() || !doc.is_object()) return std::nullopt;
    Rendezvous r;
    auto addrs = doc.find("addresses");
    auto port = doc.find("port");
    auto secret = doc.find("secret");
    if (addrs == doc.end() || !addrs->is_array() || addrs->empty()) return std::nullopt;
    for (const auto& a : *addrs) {
      if (!a.is_string()) return std::nullopt;
      boost::system::error_code ec;
      asio::ip::make_address_v4(a.get<std::string>(), ec);
      if (ec) return std::nullopt;
      r.addresses.push_back(a.get<std::string>());
    }
    if (port == doc.end() || !port->is_number_unsigned() || port->get<uint64_t>() == 0 ||
        port->get<uint64_t>() > 65535)
      return std::nullopt;
    r.port = static_cast<uint16_t>(port->get<uint64_t>());
    if (secret == doc.end() || !secret->is_string() || !from_hex(secret->get<std::string>(), kSecretBytes))
      return std::nullopt;
    r.secret_hex = secret->get<std::string>();
    return r;
  } catch (const std::exception&) {
    return std::nullopt;
  }
}

std::vector<std::string> local_ipv4_addresses() {
  std::vector<std::string> others, loopback;
  struct ifaddrs* list = nullptr;
  if (::getifaddrs(&list) == 0) {
    for (struct ifaddrs* ifa = list; ifa; ifa = ifa->ifa_next) {
      if (!ifa->ifa_addr || ifa->ifa_addr->sa_family != AF_INET || !(ifa->ifa_flags & IFF_UP)) continue;
      char buf[INET_ADDRSTRLEN];
      const auto* sin = reinterpret_cast<const struct sockaddr_in*>(ifa->ifa_addr);
      if (!::inet_ntop(AF_INET, &sin->sin_addr, buf, sizeof buf)) continue;
      std::string a = buf;
      auto& into = (ifa->ifa_flags & IFF_LOOPBACK) ? loopback : others;
      if (a != "127.0.0.1" && std::find(into.begin(), into.end(), a) == into.end()) into.push_back(a);
    }
    ::freeifaddrs(list);
  }
  others.insert(others.end(), loopback.begin(), loopback.end());
  others.push_back("127.0.0.1");
  return others;
}

// One TCP connection to another supervisor: framing, its write queue, and where its handshake is.
struct PeerConn {
  enum class Stage { handshake, authed };
  explicit PeerConn(asio::io_context& io) : socket(io), timer(io) {}
  tcp::socket socket;
  asio::steady_timer timer;     // leader: the 5 s to authenticate; follower: connect and handshake
  Stage stage = Stage::handshake;
  uint32_t peer = 0;            // the other end's index, once authenticated
  std::string nonce;            // leader: the challenge sent; follower: its own nonce
  bool got_first = false;       // the hello (leader) or welcome (follower) has arrived
  bool connecting = false;      // follower: a connect is in flight (its timer may cancel it)
  bool closed = false;
  unsigned char header[4] = {0, 0, 0, 0};
  std::string body;
  std::deque<std::string> out;
  Clock::time_point last_rx = Clock::now();
};

// Everything of a PeerLink; all but the mutex-guarded hand-over state lives on the link's thread.
struct PeerLink::Impl {
  using ConnPtr = std::shared_ptr<PeerConn>;

  Impl(uint32_t index, uint32_t peers, double silence_s, Handlers h)
      : index(index), peers(peers), silence_s(silence_s), handlers(std::move(h)), tick_timer(io),
        work(asio::make_work_guard(io)), conns(peers), lost(peers, false) {}

  const uint32_t index;
  const uint32_t peers;
  const double silence_s;
  Handlers handlers;
  asio::io_context io;
  asio::steady_timer tick_timer;
  asio::executor_work_guard<asio::io_context::executor_type> work;
  std::unique_ptr<tcp::acceptor> acceptor;
  std::vector<unsigned char> secret;  // leader: set before the thread starts; follower: per attempt
  std::vector<ConnPtr> conns;         // by peer index: the authenticated connection
  std::vector<bool> lost;             // on_lost has been called (or is due) for this peer
  std::set<ConnPtr> open;             // every connection not yet closed, to close on shutdown
  Clock::time_point last_hb = Clock::now();
  Clock::time_point last_refusal_warning = Clock::now() - std::chrono::hours(1);
  int refusals_unlogged = 0;
  std::atomic<bool> stopping{false};
  std::atomic<bool> paused{false};
  std::thread thread;

  // Hand-over to the thread blocked in lead() or follow().
  std::mutex mu;
  std::condition_variable cv;
  std::vector<std::optional<json>> hellos;  // leader
  uint32_t hello_count = 0;
  enum class Attempt { idle, running, failed, fatal, welcomed };  // follower
  Attempt attempt = Attempt::idle;
  std::string attempt_error;
  json welcome;
  json hello;  // follower: what to send once authenticated

  double hb_interval() const { return std::min(1.0, silence_s / 3); }

  void start_thread() {
    schedule_tick();
    thread = std::thread([this] {
      for (;;) {
        try {
          io.run();
          return;
        } catch (const std::exception& e) {
          spdlog::error("peer link: {}", e.what());
        }
      }
    });
  }

  void shutdown() {
    stopping = true;
    if (acceptor) {
      boost::system::error_code ec;
      acceptor->close(ec);
    }
    tick_timer.cancel();
    for (const auto& c : open) {
      boost::system::error_code ec;
      c->closed = true;
      c->timer.cancel();
      c->socket.shutdown(tcp::socket::shutdown_both, ec);
      c->socket.close(ec);
    }
    open.clear();
    work.reset();
    io.stop();
  }

  // --- callbacks, never during shutdown -------------------------------------------------------
  void report_message(uint32_t peer, const json& msg) {
    if (stopping || !handlers.on_message) return;
    try {
      handlers.on_message(peer, msg);
    } catch (const std::exception& e) {
      spdlog::error("peer link: on_message for peer {}: {}", peer, e.what());
    }
  }
  void report_lost(uint32_t peer, const std::string& why) {
    if (lost[peer]) return;
    lost[peer] = true;
    if (stopping || !handlers.on_lost) return;
    try {
      handlers.on_lost(peer, why);
    } catch (const std::exception& e) {
      spdlog::error("peer link: on_lost for peer {}: {}", peer, e.what());
    }
  }

  // --- framing --------------------------------------------------------------------------------
  void enqueue(const ConnPtr& c, std::string frame) {
    if (c->closed) return;
    c->out.push_back(std::move(frame));
    if (c->out.size() == 1) write_next(c);
  }
  void write_next(const ConnPtr& c) {
    asio::async_write(c->socket, asio::buffer(c->out.front()), [this, c](boost::system::error_code ec, size_t) {
      if (c->closed) return;
      if (ec) return drop(c, "connection lost: " + ec.message());
      c->out.pop_front();
      if (!c->out.empty()) write_next(c);
    });
  }
  void read_next(const ConnPtr& c) {
    asio::async_read(c->socket, asio::buffer(c->header), [this, c](boost::system::error_code ec, size_t) {
      if (c->closed) return;
      if (ec) return drop(c, ec == asio::error::eof ? "connection closed" : "connection lost: " + ec.message());
      uint32_t n = uint32_t(c->header[0]) << 24 | uint32_t(c->header[1]) << 16 | uint32_t(c->header[2]) << 8 |
                   uint32_t(c->header[3]);
      uint32_t limit = c->stage == PeerConn::Stage::authed ? kMaxFrame : kMaxHandshakeFrame;
      if (n == 0 || n > limit) return drop(c, fmt::format("protocol error: a message of {} bytes", n));
      c->body.resize(n);
      asio::async_read(c->socket, asio::buffer(c->body), [this, c](boost::system::error_code ec, size_t) {
        if (c->closed) return;
        if (ec) return drop(c, ec == asio::error::eof ? "connection closed" : "connection lost: " + ec.message());
        json msg = json::parse(c->body, nullptr, false);
        if (msg.is_discarded() || !msg.is_object())
          return drop(c, "protocol error: a message that is not a JSON object");
        c->last_rx = Clock::now();
        if (index == 0)
          on_leader_frame(c, msg);
        else
          on_follower_frame(c, msg);
        if (!c->closed) read_next(c);
      });
    });
  }

  // Closes `c`; reports the loss of an authenticated peer that had said its hello (leader) or
  // been welcomed (follower); a follower's attempt that fails earlier is retried by follow().
  void drop(const ConnPtr& c, const std::string& why) {
    if (c->closed) return;
    c->closed = true;
    open.erase(c);
    boost::system::error_code ec;
    c->timer.cancel();
    c->socket.shutdown(tcp::socket::shutdown_both, ec);
    c->socket.close(ec);
    if (index == 0) {
      if (c->stage != PeerConn::Stage::authed) return warn_refused(why);
      if (conns[c->peer] != c) return;
      if (!c->got_first) {
        conns[c->peer].reset();  // never joined: it may try again
        spdlog::warn("peer link: peer {} left before its hello: {}", c->peer, why);
        return;
      }
      report_lost(c->peer, why);
    } else {
      if (c->got_first) return report_lost(0, why);
      if (conns[0] == c) conns[0].reset();
      {
        std::lock_guard<std::mutex> lock(mu);
        if (attempt == Attempt::running) {
          attempt = c->stage == PeerConn::Stage::authed ? Attempt::fatal : Attempt::failed;
          attempt_error = why;
        }
      }
      cv.notify_all();
    }
  }

  // A follower with the wrong secret retries every 50 ms: one warning per 5 s, with a count.
  void warn_refused(const std::string& why) {
    if (seconds_since(last_refusal_warning) < 5 && refusals_unlogged < std::numeric_limits<int>::max()) {
      ++refusals_unlogged;
      return;
    }
    if (refusals_unlogged > 0)
      spdlog::warn("peer link: refused a connection: {} ({} more refused in the last 5 s)", why, refusals_unlogged);
    else
      spdlog::warn("peer link: refused a connection: {}", why);
    refusals_unlogged = 0;
    last_refusal_warning = Clock::now();
  }

  // --- heartbeats and silence -----------------------------------------------------------------
  void schedule_tick() {
    double period = std::clamp(silence_s / 10, 0.01, 0.1);
    tick_timer.expires_after(std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(period)));
    tick_timer.async_wait([this](boost::system::error_code ec) {
      if (ec || stopping) return;
      tick();
      schedule_tick();
    });
  }
  void tick() {
    std::vector<ConnPtr> live;
    for (const auto& c : conns)
      if (c && !c->closed && c->stage == PeerConn::Stage::authed) live.push_back(c);
    if (seconds_since(last_hb) >= hb_interval()) {
      last_hb = Clock::now();
      if (!paused) {
        std::string hb = frame_of(json{{"t", "hb"}});
        for (const auto& c : live) enqueue(c, hb);
      }
    }
    for (const auto& c : live) {
      double quiet = seconds_since(c->last_rx);
      if (quiet > silence_s) drop(c, fmt::format("no message for {:.1f} s", quiet));
    }
  }

  // --- leader ---------------------------------------------------------------------------------
  void accept_next() {
    auto c = std::make_shared<PeerConn>(io);
    acceptor->async_accept(c->socket, [this, c](boost::system::error_code ec) {
      if (stopping || ec == asio::error::operation_aborted) return;
      if (ec) {
        spdlog::warn("peer link: accept: {}", ec.message());
      } else {
        start_leader_conn(c);
      }
      accept_next();
    });
  }
  void start_leader_conn(const ConnPtr& c) {
    boost::system::error_code ec;
    c->socket.set_option(tcp::no_delay(true), ec);
    open.insert(c);
    c->nonce = random_bytes_hex(32);
    c->timer.expires_after(kAuthTimeout);
    c->timer.async_wait([this, c](boost::system::error_code ec) {
      if (!ec && c->stage != PeerConn::Stage::authed) drop(c, "no authentication within 5 s");
    });
    enqueue(c, frame_of(json{{"t", "challenge"}, {"nonce", c->nonce}}));
    read_next(c);
  }
  std::string remote_of(const ConnPtr& c) {
    boost::system::error_code ec;
    auto ep = c->socket.remote_endpoint(ec);
    return ec ? std::string("?") : ep.address().to_string() + ":" + std::to_string(ep.port());
  }
  void on_leader_frame(const ConnPtr& c, const json& msg) {
    std::string t = string_field(msg, "t");
    if (c->stage == PeerConn::Stage::handshake) {
      std::string from = "from " + remote_of(c);
      auto k = msg.find("peer");
      if (t != "auth" || k == msg.end() || !k->is_number_unsigned() || !is_nonce(msg.value("nonce", json())))
        return drop(c, from + ": not an authentication message");
      uint64_t peer = k->get<uint64_t>();
      if (peer == 0 || peer >= peers) return drop(c, from + ": peer " + std::to_string(peer) + " is out of range");
      std::string expected = hmac_hex(secret, "follower:" + std::to_string(peer) + ":" + c->nonce);
      if (!mac_equal(string_field(msg, "mac"), expected))
        return drop(c, from + ": peer " + std::to_string(peer) + " failed authentication (wrong secret)");
      if (conns[peer] || lost[peer]) return drop(c, from + ": peer " + std::to_string(peer) + " is already connected");
      c->peer = static_cast<uint32_t>(peer);
      c->stage = PeerConn::Stage::authed;
      c->timer.cancel();
      conns[peer] = c;
      enqueue(c, frame_of(json{{"t", "ok"}, {"mac", hmac_hex(secret, "leader:" + string_field(msg, "nonce"))}}));
      return;
    }
    if (t == "hb") return;
    if (!c->got_first) {
      c->got_first = true;
      {
        std::lock_guard<std::mutex> lock(mu);
        hellos[c->peer] = msg;
        ++hello_count;
      }
      cv.notify_all();
      return;
    }
    report_message(c->peer, msg);
  }

  // --- follower -------------------------------------------------------------------------------
  void start_attempt(const Rendezvous& r) {
    secret = *from_hex(r.secret_hex, kSecretBytes);
    auto c = std::make_shared<PeerConn>(io);
    open.insert(c);
    try_address(c, r, 0, "");
  }
  void fail_attempt(const ConnPtr& c, const std::string& why) { drop(c, why); }
  void try_address(const ConnPtr& c, const Rendezvous& r, size_t i, const std::string& errors) {
    if (stopping || c->closed) return;
    if (i >= r.addresses.size()) return fail_attempt(c, "could not connect to the leader:" + errors);
    boost::system::error_code ec;
    auto addr = asio::ip::make_address_v4(r.addresses[i], ec);
    std::string where = r.addresses[i] + ":" + std::to_string(r.port);
    if (ec) return try_address(c, r, i + 1, errors + " " + where + " (bad address)");
    c->socket.close(ec);
    c->timer.expires_after(kConnectTimeout);
    c->connecting = true;
    c->timer.async_wait([c](boost::system::error_code ec) {
      if (!ec && c->connecting) {
        boost::system::error_code ignored;
        c->socket.cancel(ignored);
      }
    });
    c->socket.async_connect(tcp::endpoint(addr, r.port), [this, c, r, i, errors, where](boost::system::error_code ec) {
      c->connecting = false;
      if (stopping || c->closed) return;
      c->timer.cancel();
      if (ec) {
        std::string why = ec == asio::error::operation_aborted ? "timed out" : ec.message();
        return try_address(c, r, i + 1, errors + " " + where + " (" + why + ")");
      }
      boost::system::error_code ignored;
      c->socket.set_option(tcp::no_delay(true), ignored);
      c->last_rx = Clock::now();
      c->timer.expires_after(kAuthTimeout);
      c->timer.async_wait([this, c, where](boost::system::error_code ec) {
        if (!ec && c->stage != PeerConn::Stage::authed) drop(c, "no authentication with " + where + " within 5 s");
      });
      read_next(c);
    });
  }
  void on_follower_frame(const ConnPtr& c, const json& msg) {
    std::string t = string_field(msg, "t");
    if (c->stage == PeerConn::Stage::handshake) {
      if (c->nonce.empty()) {
        if (t != "challenge" || !is_nonce(msg.value("nonce", json())))
          return drop(c, "the leader sent no challenge");
        c->nonce = random_bytes_hex(32);
        std::string mac = hmac_hex(secret, "follower:" + std::to_string(index) + ":" + string_field(msg, "nonce"));
        enqueue(c, frame_of(json{{"t", "auth"}, {"peer", index}, {"nonce", c->nonce}, {"mac", mac}}));
        return;
      }
      if (t != "ok" || !mac_equal(string_field(msg, "mac"), hmac_hex(secret, "leader:" + c->nonce)))
        return drop(c, "the leader refused authentication or failed it (another job's rendezvous file?)");
      c->stage = PeerConn::Stage::authed;
      c->timer.cancel();
      conns[0] = c;
      enqueue(c, frame_of(hello));
      return;
    }
    if (t == "hb") return;
    if (!c->got_first) {
      c->got_first = true;
      {
        std::lock_guard<std::mutex> lock(mu);
        welcome = msg;
        if (attempt == Attempt::running) attempt = Attempt::welcomed;
      }
      cv.notify_all();
      return;
    }
    report_message(0, msg);
  }

  // --- sends from any thread ------------------------------------------------------------------
  void post_send(uint32_t peer, std::string frame) {
    asio::post(io, [this, peer, frame = std::move(frame)]() mutable {
      if (stopping) return;
      const ConnPtr& c = conns[peer];
      if (c && c->stage == PeerConn::Stage::authed && (index != 0 || c->got_first)) enqueue(c, std::move(frame));
    });
  }
};

PeerLink::PeerLink(Key) {}

PeerLink::~PeerLink() {
  if (!impl_) return;
  if (impl_->thread.joinable()) {
    Impl* impl = impl_.get();
    // Frames already queued (a goodbye sent just before) go out first: up to 1 s, then close.
    auto give_up = Clock::now() + std::chrono::seconds(1);
    for (;;) {
      auto drained = std::make_shared<std::promise<bool>>();
      auto answer = drained->get_future();
      asio::post(impl->io, [impl, drained] {
        bool empty = true;
        for (const auto& c : impl->open) empty = empty && (c->closed || c->out.empty());
        drained->set_value(empty);
      });
      if (answer.wait_for(std::chrono::milliseconds(200)) != std::future_status::ready || answer.get()) break;
      if (Clock::now() > give_up) break;
      std::this_thread::sleep_for(std::chrono::milliseconds(2));
    }
    asio::post(impl->io, [impl] { impl->shutdown(); });
    impl->thread.join();
  } else {
    impl_->shutdown();
  }
}

std::unique_ptr<PeerLink> PeerLink::lead(uint32_t peers, const std::string& rendezvous_path, double timeout_s,
                                         double silence_s, Handlers h, std::vector<json>* hellos) {
  if (peers == 0) throw std::invalid_argument("PeerLink::lead: peers must be at least 1");
  auto link = std::make_unique<PeerLink>(Key());
  link->impl_ = std::make_unique<Impl>(0, peers, silence_s, std::move(h));
  Impl& impl = *link->impl_;
  impl.hellos.resize(peers);

  uint16_t port = 0;
  if (const char* p = std::getenv("LIFELINE_PEER_PORT"); p && *p) {
    char* end = nullptr;
    unsigned long v = std::strtoul(p, &end, 10);
    if (*end || v > 65535) throw std::runtime_error(std::string("LIFELINE_PEER_PORT=") + p + " is not a port number");
    port = static_cast<uint16_t>(v);
  }
  impl.acceptor = std::make_unique<tcp::acceptor>(impl.io);
  tcp::endpoint ep(asio::ip::address_v4::any(), port);
  try {
    impl.acceptor->open(ep.protocol());
    impl.acceptor->set_option(tcp::acceptor::reuse_address(true));
    impl.acceptor->bind(ep);
    impl.acceptor->listen();
  } catch (const boost::system::system_error& e) {
    throw std::runtime_error(fmt::format("peer link: cannot listen on port {}: {}", port, e.code().message()));
  }
  Rendezvous r;
  r.addresses = local_ipv4_addresses();
  r.port = impl.acceptor->local_endpoint().port();
  r.secret_hex = random_bytes_hex(kSecretBytes);
  impl.secret = *from_hex(r.secret_hex, kSecretBytes);
  write_rendezvous(rendezvous_path, r);
  spdlog::debug("peer link: leader listening on port {} for {} followers", r.port, peers - 1);

  asio::post(impl.io, [&impl] { impl.accept_next(); });
  impl.start_thread();

  auto deadline = Clock::now() + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(timeout_s));
  std::unique_lock<std::mutex> lock(impl.mu);
  if (!impl.cv.wait_until(lock, deadline, [&] { return impl.hello_count == peers - 1; })) {
    std::string missing;
    for (uint32_t k = 1; k < peers; ++k)
      if (!impl.hellos[k]) missing += (missing.empty() ? "" : ", ") + std::to_string(k);
    lock.unlock();
    throw std::runtime_error(fmt::format("peer link: peers {} did not join within {:.1f} s (rendezvous file {})",
                                         missing, timeout_s, rendezvous_path));
  }
  if (hellos) {
    hellos->assign(peers, json());
    for (uint32_t k = 1; k < peers; ++k) (*hellos)[k] = *impl.hellos[k];
  }
  return link;
}

std::unique_ptr<PeerLink> PeerLink::follow(uint32_t peer, uint32_t peers, const std::string& rendezvous_path,
                                           const json& hello, double timeout_s, double silence_s, Handlers h,
                                           json* welcome) {
  if (peer == 0 || peer >= peers)
    throw std::invalid_argument(fmt::format("PeerLink::follow: peer {} is not a follower of {} peers", peer, peers));
  (void)frame_of(hello);  // over the limit: throws here, not on the link's thread
  auto link = std::make_unique<PeerLink>(Key());
  link->impl_ = std::make_unique<Impl>(peer, peers, silence_s, std::move(h));
  Impl& impl = *link->impl_;
  impl.hello = hello;
  impl.start_thread();

  auto deadline = Clock::now() + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(timeout_s));
  std::string last_error = "no valid rendezvous file at " + rendezvous_path;
  auto give_up = [&](const std::string& why) {
    return std::runtime_error(fmt::format("peer link: peer {} could not join the leader within {:.1f} s: {}", peer,
                                          timeout_s, why));
  };
  for (;;) {
    if (Clock::now() >= deadline) throw give_up(last_error);
    std::optional<Rendezvous> r = read_rendezvous(rendezvous_path);
    if (!r) {
      last_error = "no valid rendezvous file at " + rendezvous_path;
      std::this_thread::sleep_until(std::min(deadline, Clock::now() + kRetryDelay));
      continue;
    }
    {
      std::lock_guard<std::mutex> lock(impl.mu);
      impl.attempt = Impl::Attempt::running;
    }
    asio::post(impl.io, [&impl, r = *r] { impl.start_attempt(r); });
    std::unique_lock<std::mutex> lock(impl.mu);
    impl.cv.wait_until(lock, deadline, [&] { return impl.attempt != Impl::Attempt::running; });
    switch (impl.attempt) {
      case Impl::Attempt::welcomed:
        if (welcome) *welcome = impl.welcome;
        return link;
      case Impl::Attempt::fatal:
        throw give_up("lost the leader before its welcome: " + impl.attempt_error);
      case Impl::Attempt::running:
        throw give_up("no welcome from the leader");
      default:
        last_error = impl.attempt_error;
        impl.attempt = Impl::Attempt::idle;
        lock.unlock();
        spdlog::debug("peer link: peer {}: {}; retrying", peer, last_error);
        std::this_thread::sleep_until(std::min(deadline, Clock::now() + kRetryDelay));
    }
  }
}

void PeerLink::send(uint32_t peer, const json& msg) {
  if (peer >= impl_->peers || peer == impl_->index || (impl_->index != 0 && peer != 0))
    throw std::invalid_argument(
        fmt::format("PeerLink::send: peer {} is not reachable from peer {}", peer, impl_->index));
  impl_->post_send(peer, frame_of(msg));
}

void PeerLink::broadcast(const json& msg) {
  std::string frame = frame_of(msg);
  if (impl_->index != 0) return impl_->post_send(0, std::move(frame));
  for (uint32_t k = 1; k < impl_->peers; ++k) impl_->post_send(k, frame);
}

uint32_t PeerLink::index() const { return impl_->index; }
uint32_t PeerLink::peers() const { return impl_->peers; }
void PeerLink::pause_heartbeats_for_test() { impl_->paused = true; }

}  // namespace lifeline
