#include "supervisor/local_tier.h"

#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <spdlog/spdlog.h>

#include "common/clock.h"
#include "common/json_text.h"
#include "common/random_hex.h"
#include "common/regular_file.h"
#include "history/supervisor_record.h"
#include "store/file_system.h"
#include "store/sharded.h"

namespace lifeline {

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

// The directory as the kernel resolves it (links followed) where it exists, else lexically.
fs::path resolved(const std::string& dir) {
  std::error_code ec;
  fs::path p = fs::weakly_canonical(fs::path(dir), ec);
  if (ec) p = fs::path(dir).lexically_normal();
  std::string s = p.string();
  while (s.size() > 1 && s.back() == '/') s.pop_back();
  return fs::path(s);
}

bool inside(const fs::path& child, const fs::path& parent) {
  auto c = child.begin(), p = parent.begin();
  for (; p != parent.end(); ++p, ++c)
    if (c == child.end() || *c != *p) return false;
  return true;
}

std::optional<json> read_json_file(const std::string& path) {
  std::string text, error;
  if (!read_regular_file(path, 1 << 20, text, error)) return std::nullopt;
  json j = json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (!j.is_object()) return std::nullopt;
  return j;
}

std::optional<uint64_t> step_of(const json& j, const char* key) {
  if (j.contains(key) && j[key].is_number_unsigned()) return j[key].get<uint64_t>();
  return std::nullopt;
}

json or_null(const std::optional<uint64_t>& v) { return v ? json(*v) : json(nullptr); }

}  // namespace

std::string local_tier_problem(const std::string& local, const std::string& shared) {
  fs::path l = resolved(local), s = resolved(shared);
  if (l == s) return "storage.local " + local + " is the checkpoint directory itself; name a directory on the node's own disk";
  if (inside(l, s))
    return "storage.local " + local + " is inside the checkpoint directory " + shared +
           "; name a directory on the node's own disk, e.g. $TMPDIR/lifeline";
  if (inside(s, l)) return "the checkpoint directory " + shared + " is inside storage.local " + local;
  if (auto marker = read_json_file(local + "/" + kTierMarkerName)) {
    if (marker->contains("shared_dir") && (*marker)["shared_dir"].is_string()) {
      std::string owner = (*marker)["shared_dir"].get<std::string>();
      if (resolved(owner) != s)
        return "storage.local " + local + " holds the local checkpoints of another run (checkpoint dir " + owner +
               ", says " + local + "/" + kTierMarkerName + "); its checkpoints are not this run's. Name another "
               "storage.local, or remove that directory if its run is over";
    }
  }
  return "";
}

LocalTier::LocalTier(Options options) : opt_(std::move(options)) {
  FileSystem& files = default_file_system();
  files.make_dirs(opt_.local_dir);
  if (!read_json_file(opt_.local_dir + "/" + kTierMarkerName)) {
    json marker{{"shared_dir", opt_.shared_dir}, {"host", opt_.host}, {"created", iso8601(wall_ns())}};
    std::string error;
    if (!write_status_file(opt_.local_dir, kTierMarkerName, dump_json(marker, 2), &error, /*durable=*/true))
      throw std::runtime_error("storage.local: " + error);
  }
  if (opt_.drain) {
    // The staging folder's token: its high half our pid, so gc leaves a live drain's folder alone.
    uint64_t token = (uint64_t(uint32_t(::getpid())) << 32) | std::stoull(random_hex(1), nullptr, 16);
    DrainQueue::DrainFn drain;
    if (opt_.parts)
      drain = [this](uint64_t step, const DrainProgress& progress) {
        return drain_parts(default_file_system(), opt_.local_dir, opt_.shared_dir,
                           shared_staging_name(step, parts_token_.load()), step, progress);
      };
    queue_ = std::make_unique<DrainQueue>(files, opt_.local_dir, opt_.shared_dir, token,
                                          [this](const Event& e) { on_event(e); }, /*idle_io=*/true, drain);
    queue_->set_bandwidth(opt_.drain_bandwidth);
  }
}

LocalTier::~LocalTier() { queue_.reset(); }

LocalTier::Start LocalTier::start() {
  Start out;
  // A restart in place: the drain of the last attempt's checkpoint finishes first (at full speed).
  if (queue_) {
    queue_->set_bandwidth(0);
    queue_->wait_idle(std::chrono::steady_clock::now() + std::chrono::hours(24 * 365));
    queue_->set_bandwidth(opt_.drain_bandwidth);
  }
  ResumeChoice shared = choose_resume(opt_.shared_dir);
  ResumeChoice local = choose_resume(opt_.local_dir);
  std::optional<uint64_t> s = shared.resume ? std::optional<uint64_t>(shared.resume->step) : std::nullopt;
  std::optional<uint64_t> l = local.resume ? std::optional<uint64_t>(local.resume->step) : std::nullopt;
  // What the previous attempt's tier said before this one rewrites it.
  std::optional<json> before = read_json_file(opt_.shared_dir + "/" + kTierFileName);
  {
    std::lock_guard<std::mutex> g(mu_);
    newest_drained_ = s;
    newest_local_ = l;
    newest_local_bytes_ = local.resume ? local.resume->bytes : 0;
  }
  if (l && (!s || *l > *s) && opt_.drain) {
    // On shared storage before anything else: this node may not come back.
    Event e;
    e.step = *l;
    uint64_t token = (uint64_t(uint32_t(::getpid())) << 32) | std::stoull(random_hex(1), nullptr, 16);
    try {
      e.result = drain_checkpoint(default_file_system(), opt_.local_dir, opt_.shared_dir, *l, token);
      std::lock_guard<std::mutex> g(mu_);
      newest_drained_ = *l;
      if (e.result.bytes > 0 && e.result.duration_ns > 0)
        measured_rate_ = double(e.result.bytes) / (double(e.result.duration_ns) / 1e9);
    } catch (const std::exception& ex) {
      e.kind = Event::Kind::failed;
      e.error = ex.what();
    }
    out.drained_first = e;
  }
  // The newest valid of either tier; on a tie the local copy (a faster read).
  if (l && (!s || *l >= *s)) {
    out.choice.resume = local.resume;
  } else {
    out.choice.resume = shared.resume;
  }
  uint64_t from = out.choice.resume ? out.choice.resume->step : 0;
  for (const auto* c : {&local, &shared})
    for (const auto& k : c->skipped)
      if (!out.choice.resume || k.step > from) out.choice.skipped.push_back(k);
  std::sort(out.choice.skipped.begin(), out.choice.skipped.end(),
            [](const CheckpointInfo& a, const CheckpointInfo& b) { return a.step > b.step; });
  // A checkpoint the last attempt committed locally that neither tier here holds: lost with its disk.
  if (before) {
    std::optional<uint64_t> was = step_of(*before, "newest_local");
    if (was && *was > std::max(s.value_or(0), l.value_or(0)) && *was > newest_drained_.value_or(0) &&
        !(s && *s >= *was)) {
      json lost{{"step", *was},
                {"host", before->value("host", std::string())},
                {"local_dir", before->value("local_dir", std::string())},
                {"resume_step", out.choice.resume ? json(out.choice.resume->step) : json(nullptr)}};
      out.lost = lost;
    }
  }
  write_status(/*durable=*/true);
  return out;
}

void LocalTier::committed(uint64_t step, uint64_t bytes) {
  if (opt_.parts) {
    {
      std::lock_guard<std::mutex> g(mu_);
      // Committed on shared storage: local and drained alike (nothing is resumed locally).
      newest_local_ = newest_drained_ = std::max(step, newest_local_.value_or(0));
      newest_local_bytes_ = bytes;
    }
    remove_local_parts(step);
    write_status(/*durable=*/true);
    return;
  }
  {
    std::lock_guard<std::mutex> g(mu_);
    if (!newest_local_ || step > *newest_local_) {
      newest_local_ = step;
      newest_local_bytes_ = bytes;
    }
  }
  if (queue_) {
    queue_->add(step);
  } else {
    keep_local(std::nullopt);
  }
  write_status(/*durable=*/true);
}

void LocalTier::set_parts_token(uint64_t token) { parts_token_.store(token); }

void LocalTier::parts_durable(uint64_t step) {
  if (queue_) queue_->add(step);
}

void LocalTier::parts_abandoned(uint64_t step) { remove_local_parts(step); }

void LocalTier::lift_cap() {
  if (queue_) queue_->set_bandwidth(0);
}

void LocalTier::remove_local_parts(uint64_t up_to) {
  std::error_code ec;
  const std::string prefix = ".staging-step-";
  std::vector<std::string> gone;
  for (const auto& entry : fs::directory_iterator(opt_.local_dir, ec)) {
    std::string name = entry.path().filename().string();
    if (name.rfind(prefix, 0) != 0 || name.size() < prefix.size() + 12) continue;
    uint64_t step = std::strtoull(name.substr(prefix.size(), 12).c_str(), nullptr, 10);
    auto in_flight = queue_ ? queue_->progress().step : std::nullopt;
    if (step <= up_to && !(in_flight && *in_flight == step)) gone.push_back(name);
  }
  for (const auto& name : gone) remove_staging(default_file_system(), opt_.local_dir, name);
}

void LocalTier::on_event(const Event& e) {
  {
    std::lock_guard<std::mutex> g(mu_);
    if (e.kind == Event::Kind::drained && opt_.parts) {
      // Parts on shared storage are not a checkpoint yet: the leader's commit makes one.
      if (e.result.bytes > 0 && e.result.duration_ns > 0)
        measured_rate_ = double(e.result.bytes) / (double(e.result.duration_ns) / 1e9);
    } else if (e.kind == Event::Kind::drained) {
      if (!newest_drained_ || e.step > *newest_drained_) newest_drained_ = e.step;
      if (e.result.bytes > 0 && e.result.duration_ns > 0)
        measured_rate_ = double(e.result.bytes) / (double(e.result.duration_ns) / 1e9);
    }
    events_.push_back(e);
  }
  if (e.kind != Event::Kind::skipped && !opt_.parts) {
    keep_local(queue_ ? queue_->progress().step : std::nullopt);
    write_status(/*durable=*/true);
  }
  if (opt_.wake) opt_.wake();
}

// storage.keep_local: the newest N committed local checkpoints stay, and the one a drain is
// copying; older ones are renamed to trash, then removed.
void LocalTier::keep_local(std::optional<uint64_t> also_keep) {
  auto folders = checkpoint_folders(opt_.local_dir);
  FileSystem& files = default_file_system();
  size_t keep_from = folders.size() > opt_.keep_local ? folders.size() - opt_.keep_local : 0;
  for (size_t i = 0; i < keep_from; ++i) {
    const auto& [step, name] = folders[i];
    if (also_keep && step == *also_keep) continue;
    std::string trash = opt_.local_dir + "/.trash-" + name + "-" + std::to_string(::getpid());
    try {
      files.rename(opt_.local_dir + "/" + name, trash);
      files.remove_tree(trash);
    } catch (const std::exception& ex) {
      spdlog::warn("storage.keep_local: could not remove {}: {}", opt_.local_dir + "/" + name, ex.what());
    }
  }
}

std::vector<LocalTier::Event> LocalTier::take_events() {
  std::lock_guard<std::mutex> g(mu_);
  std::vector<Event> out;
  out.swap(events_);
  return out;
}

bool LocalTier::settle(std::chrono::steady_clock::time_point deadline) {
  if (queue_) {
    queue_->set_bandwidth(0);
    queue_->wait_idle(deadline);
  }
  std::lock_guard<std::mutex> g(mu_);
  if (opt_.parts && !newest_local_) return true;  // nothing committed: nothing of it to drain
  return newest_local_ && newest_drained_ && *newest_drained_ >= *newest_local_;
}

std::optional<double> LocalTier::drain_seconds(uint64_t bytes) const {
  std::lock_guard<std::mutex> g(mu_);
  if (measured_rate_ <= 0) return std::nullopt;
  return double(bytes) / measured_rate_;
}

std::optional<uint64_t> LocalTier::newest_local() const {
  std::lock_guard<std::mutex> g(mu_);
  return newest_local_;
}

std::optional<uint64_t> LocalTier::newest_drained() const {
  std::lock_guard<std::mutex> g(mu_);
  return newest_drained_;
}

bool LocalTier::busy() const { return queue_ && queue_->progress().step.has_value(); }

json LocalTier::status() const {
  json flight = nullptr;
  if (queue_) {
    DrainQueue::Progress p = queue_->progress();
    std::optional<uint64_t> drained = newest_drained();
    if (p.step && !(drained && *drained >= *p.step)) {  // (a drain just reported is done)
      double secs = double(mono_ns() - p.started_mono_ns) / 1e9;
      double rate = secs > 0 ? double(p.done) / secs : 0;
      flight = {{"step", *p.step},
                {"bytes_done", p.done},
                {"bytes_total", p.total},
                {"rate_bytes_per_s", rate},
                {"eta_s", rate > 0 && p.total >= p.done ? json(double(p.total - p.done) / rate) : json(nullptr)}};
    }
  }
  std::lock_guard<std::mutex> g(mu_);
  return {{"host", opt_.host},
          {"pid", int64_t(::getpid())},
          {"local_dir", opt_.local_dir},
          {"drain", opt_.drain ? "async" : "off"},
          {"newest_local", or_null(newest_local_)},
          {"newest_drained", or_null(newest_drained_)},
          {"draining", flight},
          {"drain_rate_bytes_per_s", measured_rate_ > 0 ? json(measured_rate_) : json(nullptr)},
          {"updated", iso8601(wall_ns())}};
}

void LocalTier::write_status(bool durable) {
  if (!opt_.status_file) return;
  std::string error;
  if (!write_status_file(opt_.shared_dir, kTierFileName, dump_json(status(), 2), &error, durable))
    spdlog::debug("{}", error);
}

}  // namespace lifeline
