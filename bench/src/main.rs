//! `flotilla-bench`: parses the subcommand, runs it, prints its JSON summary on stdout.

use clap::{Parser, Subcommand};
use flotilla_bench::{agents, fleet, scenarios};

#[derive(Parser)]
#[command(
    name = "flotilla-bench",
    about = "Flotilla load generator and benchmarks"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Recreate the bench database with one environment and N nodes.
    Seed(fleet::SeedArgs),
    /// Connect N agents to gateways; report RSS per agent, idle CPU and connect rates.
    Idle(scenarios::idle::Args),
    /// Push one frame to every agent over N gateways (gateway alone, then a deploy through the
    /// api).
    Fanout(scenarios::fanout::Args),
    /// Fan-outs to every agent, rounds after rounds; Redis CPU per push on each server, with
    /// SPUBLISH and with classic PUBLISH on a cluster.
    PubsubCpu(scenarios::pubsub_cpu::Args),
    /// Single pushes to random agents, and single-node deploys.
    Latency(scenarios::latency::Args),
    /// Kill one of two gateways; time the reconnect storm and count bcrypt runs.
    Storm(scenarios::storm::Args),
    /// Kill a gateway, flush Redis, start a new one; time until its agents are back.
    Restart(scenarios::restart::Args),
    /// Agents polling config and sending heartbeats; api requests/s and p99.
    Poll(scenarios::poll::Args),
    /// Agents polling and heartbeating on their intervals for minutes; api CPU per 1,000
    /// requests and bcrypt runs, window by window.
    Steady(scenarios::steady::Args),
    /// The fleet API over a seeded fleet given a realistic spread: first page, deep page,
    /// summary and every filter, p50/p99.
    Browse(scenarios::browse::Args),
    /// The operator console in headless Chromium over a seeded fleet with heartbeating agents:
    /// first render, then the browser's CPU and received bytes per second.
    Page(scenarios::page::Args),
    /// (internal) a child process of simulated agents.
    #[command(hide = true)]
    Agents(agents::AgentsArgs),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if let Command::Agents(args) = cli.command {
        // Children are single-threaded: the parent runs several of them.
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        return runtime.block_on(agents::run(args));
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let summary = runtime.block_on(async {
        match cli.command {
            Command::Seed(args) => fleet::seed(args).await,
            Command::Idle(args) => scenarios::idle::run(args).await,
            Command::Fanout(args) => scenarios::fanout::run(args).await,
            Command::PubsubCpu(args) => scenarios::pubsub_cpu::run(args).await,
            Command::Latency(args) => scenarios::latency::run(args).await,
            Command::Storm(args) => scenarios::storm::run(args).await,
            Command::Restart(args) => scenarios::restart::run(args).await,
            Command::Poll(args) => scenarios::poll::run(args).await,
            Command::Steady(args) => scenarios::steady::run(args).await,
            Command::Browse(args) => scenarios::browse::run(args).await,
            Command::Page(args) => scenarios::page::run(args).await,
            Command::Agents(_) => unreachable!("handled above"),
        }
    })?;
    println!("{}", serde_json::to_string_pretty(&summary)?);
    Ok(())
}
