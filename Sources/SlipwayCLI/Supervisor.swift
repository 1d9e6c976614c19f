import ArgumentParser
import CSlipwaySpawn
import Foundation
import SlipwayServiceKit
import Synchronization

/// What the supervisor runs: written by `slipway up` to `<data>/run/supervisor-plan.json`, read by
/// the supervisor when it starts and again on SIGHUP.
struct SupervisorPlan: Codable, Equatable {
    struct Program: Codable, Equatable {
        var name: String
        var executable: String
        var arguments: [String]
    }

    /// In start order (the registry first).
    var programs: [Program]
}

/// What the supervisor has seen of each program, in `<data>/run/supervisor.json` (rewritten
/// atomically on every change): `slipway up` and `slipway ps` show it.
struct SupervisorState: Codable, Equatable {
    struct Entry: Codable, Equatable {
        var pid: Int32 = 0
        var startedAt: Double = 0
        /// Restarts after a crash since the platform was brought up.
        var restarts = 0
        /// How it last ended ("killed by signal 9 (SIGKILL)", "exited with status 1").
        var lastExit: String?
        var lastExitAt: Double?
        /// Waiting to be started again (after a crash, the backoff): when.
        var restartAt: Double?
        /// Stopped on purpose (a clean exit): not started again until `slipway up`.
        var stopped = false
    }

    var supervisorPID: Int32 = 0
    var programs: [String: Entry] = [:]

    static func load(_ path: String) -> SupervisorState? {
        guard let data = FileManager.default.contents(atPath: path) else { return nil }
        return try? JSONDecoder().decode(SupervisorState.self, from: data)
    }
}

/// Set by SIGTERM/SIGINT (stop everything and exit) and SIGHUP (read the plan again, start what
/// does not run).
private let stopRequested = Atomic<Bool>(false)
private let reloadRequested = Atomic<Bool>(false)

/// `slipway supervise`: keeps the local platform's processes running. `slipway up` starts it
/// detached; it starts every program of the plan, and one that crashes (a non-zero exit or a
/// signal) is started again after a pause that doubles with each crash in a row (0.25 s up to
/// 30 s; a run of 10 s resets it), its restart and exit reason recorded. A program that exits
/// cleanly (status 0: stopped on purpose, SIGTERM) stays stopped until the next `slipway up`.
/// SIGTERM stops the programs (callers before what they call) and then the supervisor (`slipway down`).
/// A supervisor started while programs of the plan already run adopts them (it watches their pid;
/// their exit status is unknown to it).
struct SuperviseCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "supervise", abstract: "Keep the local platform's processes running (slipway up starts it; not for direct use).", shouldDisplay: false)
    @Option(help: "Data directory.") var dataDir: String

    static let minimumBackoff = 0.25
    static let maximumBackoff = 30.0
    /// A run at least this long resets the backoff.
    static let stableSeconds = 10.0

    func run() throws {
        let platform = Platform(dataDir: dataDir)
        let supervisor = try Supervisor(platform: platform)
        signal(SIGTERM) { _ in stopRequested.store(true, ordering: .relaxed) }
        signal(SIGINT) { _ in stopRequested.store(true, ordering: .relaxed) }
        signal(SIGHUP) { _ in reloadRequested.store(true, ordering: .relaxed) }
        supervisor.log("supervisor started (pid \(getpid()))")
        supervisor.reload()
        while !stopRequested.load(ordering: .relaxed) {
            if reloadRequested.exchange(false, ordering: .relaxed) { supervisor.reload() }
            supervisor.tick()
            usleep(50_000)
        }
        supervisor.stopAll()
        supervisor.log("supervisor stopped")
    }
}

/// The supervisor's loop body (one thread: signals only set flags).
final class Supervisor {
    let platform: Platform
    var plan = SupervisorPlan(programs: [])
    var state: SupervisorState
    /// Programs this process started (it can read their exit status); others were adopted.
    var children: Set<pid_t> = []
    /// Consecutive crashes (each within ``SuperviseCommand/stableSeconds`` of its start).
    var crashes: [String: Int] = [:]

    var planPath: String { platform.runDir + "/supervisor-plan.json" }
    var statePath: String { platform.runDir + "/supervisor.json" }

    init(platform: Platform) throws {
        self.platform = platform
        state = SupervisorState.load(platform.runDir + "/supervisor.json") ?? SupervisorState()
        state.supervisorPID = getpid()
        try "\(getpid())\n".write(toFile: platform.runDir + "/supervisor.pid", atomically: true, encoding: .utf8)
    }

    func log(_ message: String) {
        let line = "\(ISO8601DateFormatter().string(from: Date())) \(message)\n"
        FileHandle.standardOutput.write(Data(line.utf8))
    }

    /// Reads the plan and starts every program of it that does not run (adopting those that do).
    func reload() {
        guard let data = FileManager.default.contents(atPath: planPath), let plan = try? JSONDecoder().decode(SupervisorPlan.self, from: data) else {
            log("cannot read \(planPath); nothing to run")
            return
        }
        self.plan = plan
        for program in plan.programs {
            var entry = state.programs[program.name] ?? .init()
            entry.stopped = false
            if let running = platform.pid(program.name) {
                if entry.pid != running { log("adopted \(program.name) (pid \(running))") }
                entry.pid = running
                entry.restartAt = nil
                state.programs[program.name] = entry
            } else {
                state.programs[program.name] = entry
                start(program)
            }
        }
        save()
    }

    func start(_ program: SupervisorPlan.Program) {
        var entry = state.programs[program.name] ?? .init()
        entry.restartAt = nil
        do {
            let pid = try platform.spawn(program.name, program.executable, program.arguments)
            children.insert(pid)
            entry.pid = pid
            entry.startedAt = Date().timeIntervalSince1970
            log("started \(program.name) (pid \(pid))")
        } catch {
            // Not startable now (a missing executable): tried again after the backoff.
            entry.pid = 0
            entry.lastExit = "could not start: \(error)"
            entry.lastExitAt = Date().timeIntervalSince1970
            entry.restartAt = Date().timeIntervalSince1970 + backoff(program.name)
            log("cannot start \(program.name): \(error)")
        }
        state.programs[program.name] = entry
    }

    /// Reaps what exited, schedules restarts, starts what is due.
    func tick() {
        var changed = false
        let now = Date().timeIntervalSince1970
        for program in plan.programs {
            guard var entry = state.programs[program.name], !entry.stopped else { continue }
            if entry.pid > 0, let exit = exited(entry.pid) {
                children.remove(entry.pid)
                entry.pid = 0
                entry.lastExit = exit.reason
                entry.lastExitAt = now
                try? FileManager.default.removeItem(atPath: "\(platform.runDir)/\(program.name).pid")
                if exit.clean {
                    entry.stopped = true
                    log("\(program.name) \(exit.reason); not restarted (a clean exit: slipway up starts it again)")
                } else {
                    crashes[program.name] = now - entry.startedAt < SuperviseCommand.stableSeconds ? crashes[program.name, default: 0] + 1 : 1
                    let pause = backoff(program.name)
                    entry.restartAt = now + pause
                    log("\(program.name) \(exit.reason); restarting in \(pause) s")
                }
                state.programs[program.name] = entry
                changed = true
            }
            if let due = entry.restartAt, due <= now {
                start(program)
                state.programs[program.name]?.restarts += 1
                changed = true
            }
        }
        if changed { save() }
    }

    func backoff(_ name: String) -> Double {
        let count = max(crashes[name, default: 1], 1)
        return min(SuperviseCommand.minimumBackoff * pow(2, Double(count - 1)), SuperviseCommand.maximumBackoff)
    }

    /// Whether `pid` has ended, and how: its exit status when it is this process's child.
    func exited(_ pid: pid_t) -> (reason: String, clean: Bool)? {
        if children.contains(pid) {
            var status: Int32 = 0
            let result = waitpid(pid, &status, WNOHANG)
            guard result == pid else {
                // ECHILD: not ours after all (reaped elsewhere): fall back to liveness.
                return result < 0 && !Platform.alive(pid) ? ("exited (status unknown)", false) : nil
            }
            let signal = status & 0x7f
            if signal == 0 {
                let code = (status >> 8) & 0xff
                return (code == 0 ? "exited with status 0" : "exited with status \(code)", code == 0)
            }
            let name = String(cString: strsignal(signal))
            return ("killed by signal \(signal) (\(name))", false)
        }
        return Platform.alive(pid) ? nil : ("exited (status unknown: started before this supervisor)", false)
    }

    /// SIGTERM to every program, then SIGKILL after 10 s each: the callers first (the gateway, the
    /// pipeline, ...), the logs service they ship to after them, the registry last.
    func stopAll() {
        let order = plan.programs.filter { $0.name != "registry" } + plan.programs.filter { $0.name == "registry" }
        for program in order {
            guard let pid = state.programs[program.name]?.pid, pid > 0 else { continue }
            Platform.stop(pid: pid, signal: SIGTERM, seconds: 10)
            var status: Int32 = 0
            _ = waitpid(pid, &status, WNOHANG)
            state.programs[program.name]?.pid = 0
            state.programs[program.name]?.stopped = true
            try? FileManager.default.removeItem(atPath: "\(platform.runDir)/\(program.name).pid")
            log("stopped \(program.name) (pid \(pid))")
        }
        state.supervisorPID = 0
        save()
        try? FileManager.default.removeItem(atPath: platform.runDir + "/supervisor.pid")
    }

    func save() {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .prettyPrinted]
        guard let data = try? encoder.encode(state) else { return }
        try? AtomicFile.write(data, to: statePath, mode: 0o644)
    }
}
