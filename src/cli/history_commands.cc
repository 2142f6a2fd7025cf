// `lifeline history`, `lifeline status` and `lifeline request`: what happened to a run, what its
// supervisor is doing now, and asking it for a checkpoint now. A missing checkpoint directory,
// or a history.jsonl or supervisor.json that cannot be used (a FIFO, a link: never opened
// through nor waited on), is an input error: exit 2 naming it. `history` only warns about
// supervisor.json, which it needs only to tell a running attempt from a lost one.
#include <unistd.h>

#include <cctype>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <optional>

#include "cli/commands.h"
#include "cli/table.h"
#include "common/clock.h"
#include "common/format.h"
#include "common/json_text.h"
#include "history/history.h"
#include "history/ledger.h"
#include "history/live_status.h"
#include "history/supervisor_record.h"
#include "history/timeline_svg.h"
#include "slurm/command_runner.h"
#include "store/checkpoint_store.h"
#include "store/dir_safety.h"

namespace lifeline::cli {

namespace {

using json = nlohmann::ordered_json;  // fields in the order written


// "2026-11-21 23:40:00" (UTC) for tables.
std::string short_time(uint64_t ns) {
  std::string s = iso8601(ns);
  s[10] = ' ';
  return s.substr(0, 19);
}

std::string opt_text(const std::optional<uint64_t>& v) { return v ? std::to_string(*v) : "-"; }

std::string end_text(const Attempt& a) {
  if (a.running) return "running";
  std::string s = a.end_reason;
  if (a.hang) s += " (hung)";
  else if (a.end_reason == "failed" && a.exit_code) s += " (" + std::to_string(*a.exit_code) + ")";
  else if (!a.signals.empty() && a.end_reason != "completed") s += " (" + a.signals.front().name + ")";
  if (a.stop_checkpoint == "missing") s += ", no stop ckpt";
  return s;
}

// "the stop produced no checkpoint (WHY): the next attempt resumes from step N; K step(s) lost",
// or "" when the attempt's stop committed its checkpoint (or it did not stop).
std::string missing_stop_text(const Attempt& a) {
  if (a.stop_checkpoint != "missing") return "";
  std::string s = "the stop produced no checkpoint";
  if (!a.stop_checkpoint_why.empty()) s += " (" + a.stop_checkpoint_why + ")";
  s += ": the next attempt resumes from " +
       (a.stop_resume_step ? "step " + std::to_string(*a.stop_resume_step) : std::string("scratch"));
  if (a.stop_lost_steps) s += "; " + std::to_string(*a.stop_lost_steps) + " step(s) of work lost";
  return s;
}

void print_history_table(const Ledger& ledger, uint64_t now) {
  Table table({{"ATTEMPT"}, {"JOB"}, {"HOST", true}, {"START (UTC)"}, {"DURATION"}, {"RESUMED"}, {"END", true},
               {"CKPTS"}, {"LOST"}, {"REQUEUE", true}});
  for (const Attempt& a : ledger.attempts) {
    double dur = double(a.end_or(now) - std::min(a.started_ns, a.end_or(now))) / 1e9;
    std::string lost = a.running ? "-" : (a.end_reason == "completed" ? "0" : human_duration(a.lost_seconds));
    if (a.end_estimated) lost = "~" + lost;
    table.add({std::to_string(a.attempt), a.job_id ? *a.job_id : "-", a.host.empty() ? "-" : a.host,
               short_time(a.started_ns), human_duration(dur) + (a.running ? "+" : ""),
               a.parent ? "warm " + std::to_string(a.parent->step) : opt_text(a.resumed_from_step),
               end_text(a), std::to_string(a.checkpoints), lost, requeue_text(a)});
  }
  std::fputs(table.render(output_width()).c_str(), stdout);
  for (const Attempt& a : ledger.attempts) {  // a fork (--init-from): where its first attempt started
    if (a.parent)
      std::printf("attempt %llu: %s, checkpoint %s\n", (unsigned long long)a.attempt, parent_words(*a.parent).c_str(),
                  a.parent->checkpoint.c_str());
    if (!a.init_from_ignored.empty())
      std::printf("attempt %llu: --init-from %s ignored: the run already had its own checkpoints\n",
                  (unsigned long long)a.attempt, a.init_from_ignored.c_str());
  }
  for (const Attempt& a : ledger.attempts)
    if (std::string m = missing_stop_text(a); !m.empty())
      std::printf("attempt %llu: %s\n", (unsigned long long)a.attempt, m.c_str());
  for (const Attempt& a : ledger.attempts)
    if (a.requeue_result == "failed")
      std::printf("attempt %llu: the requeue (%s) failed%s%s\n", (unsigned long long)a.attempt,
                  a.requeue_tried.empty() ? "?" : a.requeue_tried.c_str(), a.requeue_detail.empty() ? "" : ": ",
                  a.requeue_detail.c_str());
  const Summary& s = ledger.summary;
  std::string causes = interruptions_text(s);
  std::printf("\n");
  std::printf("wall time      %s under supervision (%s from first start to %s)\n", human_duration(s.wall_seconds).c_str(),
              human_duration(s.span_seconds).c_str(), s.state == "running" ? "now" : "last end");
  std::printf("useful compute %s\n", human_duration(s.useful_seconds).c_str());
  std::printf("checkpoints    %llu committed, %s saving%s\n", (unsigned long long)s.checkpoints,
              human_duration(s.checkpoint_seconds).c_str(),
              s.last_checkpoint_step ? (", newest step " + std::to_string(*s.last_checkpoint_step)).c_str() : "");
  std::printf("lost work      %s\n", human_duration(s.lost_seconds).c_str());
  if (s.drains + s.drains_failed + s.checkpoints_lost > 0) {
    std::string rate = s.drain_seconds > 0 ? ", " + format_size(double(s.drained_bytes) / s.drain_seconds) + "/s" : "";
    std::printf("drains         %llu to shared storage (%s in %s%s), %llu failed, %llu checkpoint(s) lost with a local disk\n",
                (unsigned long long)s.drains, format_size(double(s.drained_bytes)).c_str(),
                human_duration(s.drain_seconds).c_str(), rate.c_str(), (unsigned long long)s.drains_failed,
                (unsigned long long)s.checkpoints_lost);
  }
  if (s.goodput_percent)
    std::printf("goodput        %.1f%%\n", *s.goodput_percent);
  else
    std::printf("goodput        n/a\n");
  std::printf("interruptions  %s\n", causes.empty() ? "none" : causes.c_str());
  std::printf("state          %s\n", s.state.c_str());
}

bool write_text_file(const std::string& path, const std::string& text) {
  std::ofstream out(path, std::ios::trunc);
  out << text;
  return bool(out);
}

// Writes the timeline to `path`: SVG as drawn, PNG through rsvg-convert (librsvg2-bin). ""
// when written, else why not (nothing is written under another name).
std::string write_timeline(const std::string& path, const std::string& svg_text) {
  std::string ext = std::filesystem::path(path).extension().string();
  for (auto& c : ext) c = char(std::tolower(static_cast<unsigned char>(c)));
  if (ext.empty() || ext == ".svg") return write_text_file(path, svg_text) ? "" : "cannot write it";
  if (ext != ".png") return "a timeline is an .svg or a .png file, not " + ext;
  if (!program_available("rsvg-convert"))
    return "a PNG needs rsvg-convert (Debian: apt-get install librsvg2-bin); or name an .svg file";
  std::string tmp = path + ".tmp-" + std::to_string(::getpid()) + ".svg";
  if (!write_text_file(tmp, svg_text)) return "cannot write " + tmp;
  ProcessCommandRunner runner;
  CommandResult r = runner.run({"rsvg-convert", "--format", "png", "--output", path, tmp}, std::chrono::seconds(60));
  std::remove(tmp.c_str());
  if (!r.ok()) return "rsvg-convert failed: " + (r.err.empty() ? r.out : r.err);
  return "";
}

// ---- history --------------------------------------------------------------------------------

void register_history(CLI::App& app, int& rc) {
  auto* sub = app.add_subcommand("history", "attempts of a run, with lost work and goodput");
  auto dir = std::make_shared<std::string>();
  auto as_json = std::make_shared<bool>(false);
  auto svg = std::make_shared<std::string>();
  sub->add_option("DIR", *dir, "checkpoint directory");
  sub->add_flag("--json", *as_json, "JSON array of attempts (docs/contract.md, docs/history.md)");
  sub->add_option("--timeline", *svg, "also draw the attempts as a timeline into this file: .svg, or .png (rsvg-convert)");
  sub->callback([=, &rc] {
    std::string d = resolve_ckpt_dir(*dir);
    std::string input_error = checkpoint_dir_problem(d);
    std::vector<nlohmann::json> events;
    if (input_error.empty()) events = read_history_events(d, &input_error);
    if (!input_error.empty()) {
      std::fprintf(stderr, "lifeline history: %s\n", input_error.c_str());
      rc = 2;
      return;
    }
    std::string record_error;
    Liveness live = probe_liveness(d, &record_error);
    if (!record_error.empty()) std::fprintf(stderr, "lifeline history: warning: %s\n", record_error.c_str());
    uint64_t now = wall_ns();
    Ledger ledger = fold_history(events, live, now);
    if (!svg->empty()) {
      if (std::string why = write_timeline(*svg, timeline_svg(ledger, d, now)); !why.empty()) {
        std::fprintf(stderr, "lifeline history: --timeline %s: %s\n", svg->c_str(), why.c_str());
        rc = 2;
        return;
      }
    }
    if (*as_json) {
      json arr = json::array();
      for (const Attempt& a : ledger.attempts) arr.push_back(attempt_json(a));
      std::printf("%s\n", dump_json(arr, 2).c_str());
    } else if (ledger.attempts.empty()) {
      std::printf("no history in %s\n", d.c_str());
    } else {
      print_history_table(ledger, now);
    }
    if (!svg->empty() && !*as_json) std::printf("timeline written to %s\n", svg->c_str());
    rc = ledger.attempts.empty() ? 1 : 0;
  });
}

// ---- status ---------------------------------------------------------------------------------

// "12", "2.5": a policy number as it would be written in the YAML.
std::string number_text(const json& v) {
  if (!v.is_number()) return "?";
  double d = v.get<double>();
  char buf[32];
  std::snprintf(buf, sizeof buf, "%g", d);
  return buf;
}

std::string policy_text(const json& p) {
  auto n = [&](const char* k) { return p.contains(k) ? number_text(p[k]) : std::string("?"); };
  // A duration of the policy as the policy files write them: "45s", "1h", "2m 30s".
  auto d = [&](const char* k) { return p.contains(k) && p[k].is_number() ? format_duration(p[k].get<double>()) : std::string("?"); };
  std::string s = "checkpoint " + (p.value("every_steps", 0.0) > 0 ? "every " + n("every_steps") + " steps" : std::string("off")) +
                  " / " + (p.value("every_seconds", 0.0) > 0 ? "every " + d("every_seconds") : std::string("off")) +
                  "; keep last " + n("keep_last") + " + best " + n("keep_best");
  if (p.contains("metric") && p["metric"].is_string()) s += " by " + p["metric"].get<std::string>();
  if (p.value("max_total_bytes", 0.0) > 0) s += ", at most " + format_size(p["max_total_bytes"].get<double>());
  s += "; requeue " + p.value("requeue_mode", std::string("?")) + " (at most " + n("max_requeues") +
       " requeues, give up after " + n("max_failures") + " failures in a row); grace " + d("grace_seconds") +
       "; hang check " + (p.value("hang_seconds", 0.0) > 0 ? "after " + d("hang_seconds") : std::string("off"));
  if (p.contains("source") && p["source"].is_string() && !p["source"].get<std::string>().empty())
    s += "; from " + p["source"].get<std::string>();
  return s;
}

// The node-local tier's lines of `status` (docs/storage.md), when it has one.
void print_tier(const json& j) {
  if (!j.contains("tier") || !j["tier"].is_object()) return;
  const json& t = j["tier"];
  auto step = [](const json& v) { return v.is_number() ? "step " + dump_json(v) : std::string("none"); };
  std::printf("local tier      %s on %s: newest %s; drained to shared storage: newest %s%s\n",
              t.value("local_dir", std::string("?")).c_str(), t.value("host", std::string("?")).c_str(),
              step(t["newest_local"]).c_str(), step(t["newest_drained"]).c_str(),
              t.value("drain", std::string("async")) == "off" ? " (storage.drain: off)" : "");
  if (t.contains("draining") && t["draining"].is_object()) {
    const json& d = t["draining"];
    double done = d.value("bytes_done", 0.0), total = d.value("bytes_total", 0.0), rate = d.value("rate_bytes_per_s", 0.0);
    std::string eta = d["eta_s"].is_number() ? ", about " + human_duration(d["eta_s"].get<double>()) + " left" : "";
    std::printf("draining        %s: %s of %s, %s/s%s\n", step(d["step"]).c_str(), format_size(done).c_str(),
                format_size(total).c_str(), format_size(rate).c_str(), eta.c_str());
  }
}

void print_live_status(const json& j) {
  const json& s = j["supervisor"];
  std::string job = s["job_id"].is_string() ? ", job " + s["job_id"].get<std::string>() : "";
  std::printf("supervisor      pid %lld on %s%s, attempt %llu, since %s\n", s["pid"].get<long long>(),
              s["host"].get<std::string>().c_str(), job.c_str(), s["attempt"].get<unsigned long long>(),
              s["started"].is_string() ? s["started"].get<std::string>().c_str() : "?");
  const json& a = j["attempt"];
  if (a.is_object())
    std::printf("attempt         %s, %s so far\n",
                a["resumed_from_step"].is_number() ? ("resumed from step " + dump_json(a["resumed_from_step"])).c_str()
                : a.contains("parent") && a["parent"].is_object() && a["parent"]["step"].is_number()
                    ? ("a warm start from step " + dump_json(a["parent"]["step"]) + " of another run").c_str()
                    : "started from scratch",
                (dump_json(a["checkpoints"]) + " checkpoint(s)").c_str());
  if (j.contains("note")) std::printf("note            %s\n", j["note"].get<std::string>().c_str());
  if (j["trainer"].is_object()) {
    const json& t = j["trainer"];
    std::string rate = "rate unknown";
    if (t["steps_per_second"].is_number()) {
      char buf[64];
      std::snprintf(buf, sizeof buf, "%.1f steps/s (%s)", t["steps_per_second"].get<double>(),
                    t["rate_from"].get<std::string>() == "sample" ? "just measured" : "from the history");
      rate = buf;
    }
    std::printf("trainer         pid %s, %s, step %llu, %s\n", t["pid"].is_number() ? dump_json(t["pid"]).c_str() : "-",
                t["state"].get<std::string>().c_str(), t["step"].get<unsigned long long>(), rate.c_str());
  }
  if (j.contains("nodes") && j["nodes"].is_array()) {  // several supervisors: every node's ranks
    for (const json& n : j["nodes"])
      for (const json& r : n.value("ranks", json::array()))
        std::printf("node %s %-10s rank %s pid %s, %s, step %llu\n", dump_json(n["node"]).c_str(),
                    n.value("host", std::string("?")).c_str(),
                    (dump_json(r["rank"]) + "/" + dump_json(r["world_size"])).c_str(), dump_json(r["pid"]).c_str(),
                    r.value("state", std::string("?")).c_str(), r.value("step", 0ull));
  } else if (j.contains("ranks") && j["ranks"].is_array())
    for (const json& r : j["ranks"])
      std::printf("rank %-10s pid %s, %s, step %llu%s\n", (dump_json(r["rank"]) + "/" + dump_json(r["world_size"])).c_str(),
                  dump_json(r["pid"]).c_str(), r["state"].get<std::string>().c_str(), r["step"].get<unsigned long long>(),
                  r["part_step"].is_number() ? (", part of step " + dump_json(r["part_step"]) + " written").c_str() : "");
  if (j["last_checkpoint"].is_object())
    std::printf("last checkpoint step %llu, %s ago\n", j["last_checkpoint"]["step"].get<unsigned long long>(),
                human_duration(j["last_checkpoint"]["age_seconds"].get<double>()).c_str());
  else
    std::printf("last checkpoint none yet\n");
  print_tier(j);
  if (j.contains("pending_request")) {
    const json& p = j["pending_request"];
    if (p.is_object()) {
      std::string deadline = p["deadline_in_seconds"].is_number()
                                 ? ", deadline in " + human_duration(p["deadline_in_seconds"].get<double>())
                                 : "";
      std::printf("pending request seq %llu (%s%s)%s\n", p["seq"].get<unsigned long long>(),
                  p["reason"].get<std::string>().c_str(), p["stop"].get<bool>() ? ", then stop" : "", deadline.c_str());
    } else {
      std::printf("pending request none\n");
    }
  }
  if (j.contains("next_checkpoint")) {
    const json& n = j["next_checkpoint"];
    std::string text;
    if (n["step"].is_number()) {
      text = "step " + dump_json(n["step"]);
      if (n["step_in_seconds"].is_number()) text += " (in ~" + human_duration(n["step_in_seconds"].get<double>()) + ")";
    }
    if (n["periodic_at"].is_string())
      text += (text.empty() ? "" : "; ") + std::string("periodic in ") +
              human_duration(n["periodic_in_seconds"].get<double>());
    std::printf("next checkpoint %s\n", text.empty() ? "only on request or signal" : text.c_str());
  }
  std::printf("policy          %s\n", policy_text(j["policy"]).c_str());
}

void register_status(CLI::App& app, int& rc) {
  auto* sub = app.add_subcommand("status", "live view of the running supervisor (exit 1 when none runs)");
  auto dir = std::make_shared<std::string>();
  auto as_json = std::make_shared<bool>(false);
  auto sample = std::make_shared<double>(0.5);
  sub->add_option("DIR", *dir, "checkpoint directory");
  sub->add_flag("--json", *as_json, "JSON object");
  sub->add_option("--sample", *sample, "seconds between the two step readings that give the rate (0: from history)")
      ->check(CLI::Range(0.0, 60.0));
  sub->callback([=, &rc] {
    std::string d = resolve_ckpt_dir(*dir);
    std::string input_error = checkpoint_dir_problem(d);
    std::optional<SupervisorRecord> record;
    std::vector<nlohmann::json> events;
    if (input_error.empty()) record = read_supervisor_record(d, &input_error);
    if (input_error.empty()) events = read_history_events(d, &input_error);
    if (!input_error.empty()) {
      std::fprintf(stderr, "lifeline status: %s\n", input_error.c_str());
      rc = 2;
      return;
    }
    Liveness live = probe_liveness(d);
    Ledger ledger = fold_history(events, live, wall_ns());
    json j = status_report(d, record, live, ledger, *sample);
    if (*as_json) {
      std::printf("%s\n", dump_json(j, 2).c_str());
    } else if (j["running"].get<bool>()) {
      print_live_status(j);
    } else {
      std::printf("no supervisor is running for %s: %s\n", d.c_str(), j["reason"].get<std::string>().c_str());
      if (!ledger.attempts.empty()) {
        const Attempt& a = ledger.attempts.back();
        std::printf("last attempt    %llu%s on %s, ended %s: %s, %llu checkpoint(s)%s\n", (unsigned long long)a.attempt,
                    a.job_id ? (" (job " + *a.job_id + ")").c_str() : "", a.host.c_str(),
                    a.ended_ns ? short_time(*a.ended_ns).c_str() : "?", end_text(a).c_str(),
                    (unsigned long long)a.checkpoints,
                    a.last_checkpoint_step ? (", last step " + std::to_string(*a.last_checkpoint_step)).c_str() : "");
        if (std::string m = missing_stop_text(a); !m.empty()) std::printf("                %s\n", m.c_str());
      }
      const json& n = j["newest_checkpoint"];
      if (n.is_object())
        std::printf("newest checkpoint step %llu, created %s\n", n["step"].get<unsigned long long>(),
                    n["created"].get<std::string>().c_str());
      else
        std::printf("newest checkpoint none\n");
      print_tier(j);
    }
    rc = j["running"].get<bool>() ? 0 : 1;
  });
}

// ---- request --------------------------------------------------------------------------------

void register_request(CLI::App& app, int& rc) {
  auto* sub = app.add_subcommand("request", "ask the running supervisor for a checkpoint now");
  auto dir = std::make_shared<std::string>();
  auto wait = std::make_shared<bool>(false);
  auto timeout = std::make_shared<double>(300);
  auto as_json = std::make_shared<bool>(false);
  sub->add_option("DIR", *dir, "checkpoint directory");
  sub->add_flag("--wait", *wait, "wait until a checkpoint answering the request is committed");
  sub->add_option("--timeout", *timeout, "longest --wait, seconds (then exit 1)")->check(CLI::NonNegativeNumber);
  sub->add_flag("--json", *as_json, "JSON object {seq, committed_step}");
  sub->callback([=, &rc] {
    std::string d = resolve_ckpt_dir(*dir);
    std::string input_error = checkpoint_dir_problem(d);
    if (input_error.empty()) read_supervisor_record(d, &input_error);
    if (!input_error.empty()) {  // not "no supervisor runs" (1): the directory is not usable
      std::fprintf(stderr, "lifeline request: %s\n", input_error.c_str());
      if (*as_json)
        std::printf("%s\n",
                    dump_json(json{{"seq", nullptr}, {"committed_step", nullptr}, {"error", input_error}}, 2).c_str());
      rc = 2;
      return;
    }
    std::string why;
    auto sup = attach_supervisor(d, why);
    if (!sup) {
      std::fprintf(stderr, "lifeline request: %s\n", why.c_str());
      if (*as_json) std::printf("%s\n", dump_json(json{{"seq", nullptr}, {"committed_step", nullptr}, {"error", why}}, 2).c_str());
      rc = 1;
      return;
    }
    uint64_t seq = post_checkpoint_request(d, *sup, "lifeline request");
    if (!*as_json)
      std::printf("checkpoint requested from supervisor pid %lld (request seq %llu)\n", (long long)sup->record.pid,
                  (unsigned long long)seq);
    if (!*wait) {
      if (*as_json) std::printf("%s\n", dump_json(json{{"seq", seq}, {"committed_step", nullptr}}, 2).c_str());
      rc = 0;
      return;
    }
    CommitWait result = wait_for_commit(d, *sup, seq, *timeout);
    const std::string& failure = result.failure;
    if (!failure.empty()) {
      std::fprintf(stderr, "lifeline request: %s\n", failure.c_str());
      if (*as_json) std::printf("%s\n", dump_json(json{{"seq", seq}, {"committed_step", nullptr}, {"error", failure}}, 2).c_str());
      rc = 1;
      return;
    }
    uint64_t step = *result.committed_step;
    double secs = result.waited_seconds;
    if (*as_json)
      std::printf("%s\n", dump_json(json{{"seq", seq}, {"committed_step", step}, {"waited_seconds", round3(secs)}}, 2).c_str());
    else
      std::printf("committed step %llu (%s after the request)\n", (unsigned long long)step, human_duration(secs).c_str());
    rc = 0;
  });
}

}  // namespace

void register_history_commands(CLI::App& app, int& rc) {
  register_history(app, rc);
  register_status(app, rc);
  register_request(app, rc);
}

}  // namespace lifeline::cli
