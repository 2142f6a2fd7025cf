// The channel between the supervisors of one job (supervisor/peer_link.h): the rendezvous file,
// mutual authentication with the job's secret, ordered messages both ways, and losing a peer by
// its connection closing or by its silence. Leader and followers run on threads of this process.
#include <doctest.h>
#include <sys/stat.h>

#include <array>
#include <chrono>
#include <condition_variable>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include <boost/asio.hpp>

#include "supervisor/peer_link.h"
#include "support/temp_dir.h"

using namespace lifeline;
using json = nlohmann::json;
using lifeline::test::TempDir;

namespace {

constexpr auto kWait = std::chrono::seconds(5);

// What one link's handlers saw, for a test thread to wait on.
struct Recorder {
  std::mutex mu;
  std::condition_variable cv;
  std::vector<std::pair<uint32_t, json>> messages;
  std::map<uint32_t, std::vector<std::string>> lost;

  PeerLink::Handlers handlers() {
    return {[this](uint32_t peer, const json& msg) {
              std::lock_guard<std::mutex> lock(mu);
              messages.emplace_back(peer, msg);
              cv.notify_all();
            },
            [this](uint32_t peer, const std::string& why) {
              std::lock_guard<std::mutex> lock(mu);
              lost[peer].push_back(why);
              cv.notify_all();
            }};
  }
  // True once `done` holds (checked under the lock), false after `timeout`.
  bool wait(const std::function<bool()>& done, std::chrono::milliseconds timeout = kWait) {
    std::unique_lock<std::mutex> lock(mu);
    return cv.wait_for(lock, timeout, done);
  }
};

// A follower joining on its own thread, since follow() blocks until the welcome.
struct FollowerThread {
  std::unique_ptr<PeerLink> link;
  json welcome;
  std::string error;
  std::thread thread;

  FollowerThread(uint32_t peer, uint32_t peers, std::string path, double timeout_s, double silence_s,
                 PeerLink::Handlers h) {
    thread = std::thread([=, h = std::move(h)] {
      try {
        link = PeerLink::follow(peer, peers, path, json{{"hello_from", peer}}, timeout_s, silence_s, h, &welcome);
      } catch (const std::exception& e) {
        error = e.what();
      }
    });
  }
  ~FollowerThread() { join(); }
  void join() {
    if (thread.joinable()) thread.join();
  }
};

}  // namespace

TEST_CASE("three peers authenticate, then messages flow both ways in order") {
  TempDir dir;
  std::string path = dir / "rendezvous.json";
  Recorder leader_rec, rec1, rec2;
  FollowerThread f1(1, 3, path, 10, 10, rec1.handlers());
  FollowerThread f2(2, 3, path, 10, 10, rec2.handlers());

  std::vector<json> hellos;
  auto leader = PeerLink::lead(3, path, 10, 10, leader_rec.handlers(), &hellos);
  REQUIRE(hellos.size() == 3);
  CHECK(hellos[1] == json{{"hello_from", 1}});
  CHECK(hellos[2] == json{{"hello_from", 2}});
  CHECK(leader->index() == 0);
  CHECK(leader->peers() == 3);

  leader->send(1, json{{"welcome", 1}});
  leader->send(2, json{{"welcome", 2}});
  for (int i = 0; i < 50; ++i) leader->broadcast(json{{"seq", i}});
  f1.join();
  f2.join();
  REQUIRE(f1.error == "");
  REQUIRE(f2.error == "");
  CHECK(f1.welcome == json{{"welcome", 1}});
  CHECK(f2.welcome == json{{"welcome", 2}});
  CHECK(f1.link->index() == 1);

  for (Recorder* rec : {&rec1, &rec2}) {
    REQUIRE(rec->wait([&] { return rec->messages.size() == 50; }));
    std::lock_guard<std::mutex> lock(rec->mu);
    for (int i = 0; i < 50; ++i) {
      CHECK(rec->messages[i].first == 0);
      CHECK(rec->messages[i].second == json{{"seq", i}});
    }
  }

  for (int i = 0; i < 50; ++i) {
    f1.link->send(0, json{{"from", 1}, {"seq", i}});
    f2.link->broadcast(json{{"from", 2}, {"seq", i}});  // a follower's broadcast goes to the leader
  }
  REQUIRE(leader_rec.wait([&] { return leader_rec.messages.size() == 100; }));
  std::lock_guard<std::mutex> lock(leader_rec.mu);
  std::map<uint32_t, int> next;
  for (const auto& [peer, msg] : leader_rec.messages) {
    CHECK(msg["from"] == peer);
    CHECK(msg["seq"] == next[peer]++);
  }
  CHECK(next[1] == 50);
  CHECK(next[2] == 50);
  CHECK(leader_rec.lost.empty());
}

TEST_CASE("a follower with the wrong secret is refused and lead() times out naming it") {
  TempDir dir;
  std::string path = dir / "rendezvous.json";
  std::string wrong = dir / "wrong.json";
  Recorder leader_rec, rec1;
  // The follower reads a copy of the leader's file with another secret, written once the leader's exists.
  std::thread forger([&] {
    auto deadline = std::chrono::steady_clock::now() + kWait;
    std::optional<Rendezvous> r;
    while (!(r = read_rendezvous(path)) && std::chrono::steady_clock::now() < deadline)
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    if (!r) return;
    r->secret_hex = std::string(64, 'a');
    write_rendezvous(wrong, *r);
  });
  FollowerThread f1(1, 2, wrong, 3, 10, rec1.handlers());

  std::string error;
  try {
    PeerLink::lead(2, path, 1.5, 10, leader_rec.handlers(), nullptr);
  } catch (const std::runtime_error& e) {
    error = e.what();
  }
  forger.join();
  f1.join();
  CHECK(error.find("peers 1 did not join") != std::string::npos);
  CHECK(f1.link == nullptr);
  CHECK(f1.error.find("could not join") != std::string::npos);
  CHECK(leader_rec.messages.empty());
  CHECK(leader_rec.lost.empty());
}

TEST_CASE("an unauthenticated connection does not hold the leader and is closed after 5 s") {
  namespace asio = boost::asio;
  TempDir dir;
  std::string path = dir / "rendezvous.json";
  Recorder leader_rec, rec1;
  std::unique_ptr<PeerLink> leader;
  std::string lead_error;
  std::thread leader_thread([&] {
    try {
      leader = PeerLink::lead(2, path, 15, 10, leader_rec.handlers(), nullptr);
    } catch (const std::exception& e) {
      lead_error = e.what();
    }
  });

  // An intruder connects as soon as the file exists, reads the challenge, then says nothing.
  std::optional<Rendezvous> r;
  auto deadline = std::chrono::steady_clock::now() + kWait;
  while (!(r = read_rendezvous(path)) && std::chrono::steady_clock::now() < deadline)
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  REQUIRE(r);
  asio::io_context io;
  asio::ip::tcp::socket idle(io);
  idle.connect({asio::ip::make_address_v4("127.0.0.1"), r->port});
  auto connected = std::chrono::steady_clock::now();
  std::array<unsigned char, 4> header{};
  asio::read(idle, asio::buffer(header));
  std::string challenge(size_t(header[2]) << 8 | header[3], '\0');
  asio::read(idle, asio::buffer(challenge));
  CHECK(json::parse(challenge)["t"] == "challenge");

  // A real follower joins while the intruder holds its connection.
  FollowerThread f1(1, 2, path, 10, 10, rec1.handlers());
  leader_thread.join();
  REQUIRE(lead_error == "");
  leader->send(1, json::object());
  f1.join();
  REQUIRE(f1.link);

  // The leader closes the intruder's connection once its 5 s are up (heartbeats are for peers only).
  std::optional<boost::system::error_code> closed;
  std::array<unsigned char, 64> buf{};
  asio::async_read(idle, asio::buffer(buf), [&](boost::system::error_code ec, size_t) { closed = ec; });
  io.run_for(std::chrono::seconds(8));
  REQUIRE(closed);
  CHECK(*closed == asio::error::eof);
  double after = std::chrono::duration<double>(std::chrono::steady_clock::now() - connected).count();
  CHECK(after >= 4.9);
  CHECK(after < 7.0);
  std::lock_guard<std::mutex> lock(leader_rec.mu);
  CHECK(leader_rec.lost.empty());
}

TEST_CASE("a second follower claiming a connected peer's index is refused") {
  TempDir dir;
  std::string path = dir / "rendezvous.json";
  Recorder leader_rec, rec1, rec_dup;
  FollowerThread f1(1, 2, path, 10, 10, rec1.handlers());
  auto leader = PeerLink::lead(2, path, 10, 10, leader_rec.handlers(), nullptr);
  leader->send(1, json::object());
  f1.join();
  REQUIRE(f1.link);
  FollowerThread dup(1, 2, path, 1, 10, rec_dup.handlers());
  dup.join();
  CHECK(dup.link == nullptr);
  CHECK(dup.error.find("could not join") != std::string::npos);
  std::lock_guard<std::mutex> lock(leader_rec.mu);
  CHECK(leader_rec.lost.empty());
}

TEST_CASE("a follower that starts before the rendezvous file exists still joins") {
  TempDir dir;
  std::string path = dir / "rendezvous.json";
  // A stale file from an earlier run: a port nobody listens on and another secret.
  write_rendezvous(path, Rendezvous{{"127.0.0.1"}, 1, std::string(64, 'b')});
  Recorder leader_rec, rec1;
  FollowerThread f1(1, 2, path, 10, 10, rec1.handlers());
  std::this_thread::sleep_for(std::chrono::milliseconds(300));  // not synchronisation: let it retry a while

  std::vector<json> hellos;
  auto leader = PeerLink::lead(2, path, 10, 10, leader_rec.handlers(), &hellos);
  CHECK(hellos.at(1) == json{{"hello_from", 1}});
  leader->send(1, json{{"welcome", true}});
  f1.join();
  REQUIRE(f1.error == "");
  CHECK(f1.welcome == json{{"welcome", true}});
}

TEST_CASE("a closed follower is lost to the leader, and a closed leader to its followers") {
  TempDir dir;
  std::string path = dir / "rendezvous.json";
  Recorder leader_rec, rec1, rec2;
  FollowerThread f1(1, 3, path, 10, 10, rec1.handlers());
  FollowerThread f2(2, 3, path, 10, 10, rec2.handlers());
  auto leader = PeerLink::lead(3, path, 10, 10, leader_rec.handlers(), nullptr);
  leader->send(1, json::object());
  leader->send(2, json::object());
  f1.join();
  f2.join();
  REQUIRE(f1.link);
  REQUIRE(f2.link);

  f1.link.reset();
  REQUIRE(leader_rec.wait([&] { return leader_rec.lost.count(1) == 1; }, std::chrono::milliseconds(1000)));
  {
    std::lock_guard<std::mutex> lock(leader_rec.mu);
    CHECK(leader_rec.lost[1] == std::vector<std::string>{"connection closed"});
    CHECK(leader_rec.lost.count(2) == 0);
  }
  CHECK(rec1.lost.empty());  // no callback from a link being destroyed

  // The leader keeps serving the other follower.
  leader->broadcast(json{{"still", "here"}});
  REQUIRE(rec2.wait([&] { return rec2.messages.size() == 1; }));

  leader.reset();
  REQUIRE(rec2.wait([&] { return rec2.lost.count(0) == 1; }, std::chrono::milliseconds(1000)));
  std::lock_guard<std::mutex> lock(rec2.mu);
  CHECK(rec2.lost[0].size() == 1);
  CHECK(leader_rec.lost.count(2) == 0);
}

TEST_CASE("a peer that falls silent is lost after silence_s") {
  TempDir dir;
  std::string path = dir / "rendezvous.json";
  Recorder leader_rec, rec1, rec2;
  FollowerThread f1(1, 3, path, 10, 0.5, rec1.handlers());
  FollowerThread f2(2, 3, path, 10, 0.5, rec2.handlers());
  auto leader = PeerLink::lead(3, path, 10, 0.5, leader_rec.handlers(), nullptr);
  leader->send(1, json::object());
  leader->send(2, json::object());
  f1.join();
  f2.join();
  REQUIRE(f1.link);
  REQUIRE(f2.link);

  auto paused = std::chrono::steady_clock::now();
  f1.link->pause_heartbeats_for_test();
  REQUIRE(leader_rec.wait([&] { return leader_rec.lost.count(1) == 1; }));
  double after = std::chrono::duration<double>(std::chrono::steady_clock::now() - paused).count();
  CHECK(after >= 0.4);
  CHECK(after < 2.0);
  {
    std::lock_guard<std::mutex> lock(leader_rec.mu);
    CHECK(leader_rec.lost[1].at(0).find("no message for 0.") == 0);
  }
  // The live follower's heartbeats keep it, well past silence_s.
  CHECK_FALSE(leader_rec.wait([&] { return leader_rec.lost.count(2) == 1; }, std::chrono::milliseconds(1500)));
  // The silent follower learns it too: the leader closed it.
  REQUIRE(rec1.wait([&] { return rec1.lost.count(0) == 1; }));
  std::lock_guard<std::mutex> lock(rec2.mu);
  CHECK(rec2.lost.empty());
}

TEST_CASE("the rendezvous file is 0600, round-trips, and a truncated one reads as nothing") {
  TempDir dir;
  std::string path = dir / "rendezvous.json";
  CHECK_FALSE(read_rendezvous(path));
  Rendezvous r{{"10.0.0.7", "127.0.0.1"}, 40123, std::string(32, '0') + std::string(32, 'f')};
  write_rendezvous(path, r);
  struct stat st {};
  REQUIRE(::stat(path.c_str(), &st) == 0);
  CHECK((st.st_mode & 07777) == 0600);
  auto back = read_rendezvous(path);
  REQUIRE(back);
  CHECK(back->addresses == r.addresses);
  CHECK(back->port == 40123);
  CHECK(back->secret_hex == r.secret_hex);
  // No temporary file left beside it.
  int entries = 0;
  for (const auto& e : std::filesystem::directory_iterator(dir.path())) entries += e.is_regular_file();
  CHECK(entries == 1);

  std::string text;
  {
    std::ifstream in(path);
    std::getline(in, text);
  }
  for (size_t cut : {size_t(0), size_t(1), text.size() / 2, text.size() - 2}) {
    std::ofstream(path, std::ios::trunc) << text.substr(0, cut);
    CHECK_FALSE(read_rendezvous(path));
  }
  json bad = json::parse(text);
  bad["secret"] = "abc";
  std::ofstream(path, std::ios::trunc) << bad.dump();
  CHECK_FALSE(read_rendezvous(path));

  CHECK_THROWS_AS(write_rendezvous(dir / "missing/rendezvous.json", r), std::runtime_error);
  try {
    write_rendezvous(dir / "missing/rendezvous.json", r);
  } catch (const std::runtime_error& e) {
    CHECK(std::string(e.what()).find("missing/rendezvous.json") != std::string::npos);
  }
}

TEST_CASE("local addresses list 127.0.0.1 last") {
  auto a = local_ipv4_addresses();
  REQUIRE_FALSE(a.empty());
  CHECK(a.back() == "127.0.0.1");
}
