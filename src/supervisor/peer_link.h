#pragma once
// The authenticated channel between the `lifeline run` supervisors of one Slurm job: one
// supervisor per node, supervisor 0 the leader, the others its followers. A rendezvous file in
// the checkpoint directory says where the leader listens and holds the job's shared secret;
// both ends prove they know it (HMAC-SHA256 over each other's nonce) without sending it.
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace lifeline {

// Where the leader listens and the job's shared secret (a file in the checkpoint dir, 0600).
struct Rendezvous {
  std::vector<std::string> addresses;  // IPv4 addresses to try, in order
  uint16_t port = 0;
  std::string secret_hex;              // 64 hex digits (32 random bytes)
};

// Atomic write: tmp file in the same dir created 0600 (O_EXCL|O_NOFOLLOW), write JSON, fsync,
// rename over `path`, fsync the dir. Throws std::runtime_error naming the path.
void write_rendezvous(const std::string& path, const Rendezvous& r);
// nullopt when missing, unreadable, or not valid (partial JSON, bad secret); never throws.
std::optional<Rendezvous> read_rendezvous(const std::string& path);
// This host's IPv4 addresses from getifaddrs: interfaces that are up, non-loopback first,
// 127.0.0.1 last (always present).
std::vector<std::string> local_ipv4_addresses();

// One supervisor's end of the job's channel: the leader (peer 0) accepts a connection from each
// follower; every message is a JSON object framed as a 4-byte big-endian length + the JSON text
// (max 1 MiB). Runs its own thread with its own io_context; callbacks run on that thread (the
// caller posts them on). Both ends send a heartbeat {"t":"hb"} every min(1 s, silence_s / 3), so
// a silence_s under 3 s still holds a healthy peer; a message whose "t" is "hb" never reaches
// on_message.
class PeerLink {
  // Passkey: only lead() and follow() construct a PeerLink (through std::make_unique).
  struct Key {
    explicit Key() = default;
  };

 public:
  // What the link reports to its owner, on the link's thread.
  struct Handlers {
    std::function<void(uint32_t peer, const nlohmann::json& msg)> on_message;  // leader: from follower `peer`; follower: peer is 0
    std::function<void(uint32_t peer, const std::string& why)> on_lost;        // called at most once per peer
  };
  struct Impl;  // the link's state and its thread (peer_link.cc)

  explicit PeerLink(Key);  // only through lead() and follow()
  PeerLink(const PeerLink&) = delete;
  PeerLink& operator=(const PeerLink&) = delete;
  // Closes sockets, joins the thread; no callback runs after it returns. Not from a callback.
  ~PeerLink();

  // Leader: listens on 0.0.0.0 port 0 (or LIFELINE_PEER_PORT if set), writes the rendezvous file
  // with local_ipv4_addresses(), then waits until all `peers - 1` followers have connected,
  // authenticated and sent their first message (their hello). Returns the hellos by peer index
  // (index 0 unused). Throws std::runtime_error after `timeout_s` naming the peers still missing.
  // Handlers are only called for messages after the hello.
  static std::unique_ptr<PeerLink> lead(uint32_t peers, const std::string& rendezvous_path, double timeout_s,
                                        double silence_s, Handlers h, std::vector<nlohmann::json>* hellos);
  // Follower `peer` (1..peers-1): reads the rendezvous file (retrying every 50 ms until it exists
  // and a connection authenticates — a stale file from an earlier run is just retried), connects
  // (1 s connect timeout per address), authenticates, sends `hello`, waits for the leader's first
  // message (the welcome) and returns it in *welcome. Throws std::runtime_error after `timeout_s`.
  static std::unique_ptr<PeerLink> follow(uint32_t peer, uint32_t peers, const std::string& rendezvous_path,
                                          const nlohmann::json& hello, double timeout_s, double silence_s,
                                          Handlers h, nlohmann::json* welcome);

  // Thread-safe sends (queued on the link's thread; never block the caller). The leader's first
  // send to a follower is that follower's welcome (send one to every follower right after lead()).
  // Sends to a peer that is gone are dropped. Throws std::runtime_error for a message over 1 MiB,
  // std::invalid_argument for a peer that is not the other end (a follower sends only to 0).
  void send(uint32_t peer, const nlohmann::json& msg);  // leader -> one follower; follower -> leader (peer 0)
  void broadcast(const nlohmann::json& msg);            // leader -> every follower still connected
  uint32_t index() const;
  uint32_t peers() const;

  // Tests only: stop sending heartbeats, so the other end finds this one silent.
  void pause_heartbeats_for_test();

 private:
  std::unique_ptr<Impl> impl_;
};

}  // namespace lifeline
