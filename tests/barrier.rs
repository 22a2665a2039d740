//! The harness's barrier-then-assert rule can fail (README, "Development"): a count that
//! moves after a test first saw its expected value is caught by the assertion made after the
//! barrier, where a read at the moment the value was reached would have passed. The late extra
//! restart is injected through the real runtime between that read and the barrier, so it
//! reaches the agent exactly as a late double count would: one more restart of the same
//! identity, after the expected one.

mod common;

use std::panic::{catch_unwind, AssertUnwindSafe};

use common::{Agent, DockerDaemon, PodmanService, Runtime, LOOP};

fn a_late_extra_count_fails_the_assertion_after_the_barrier(rt: &dyn Runtime) {
    let label = format!("lat.test={}", common::unique("barrier-check"));
    let opts = ["--label", label.as_str()];
    let agent = Agent::on(rt).filter(&label).start();
    let ctr = rt.run("late", &opts, LOOP);
    let series = [("container", ctr.name.as_str())];
    agent.wait_metric("container_running", &series, 1.0);
    rt.cli_ok(&["restart", "-t", "5", &ctr.name]);
    // A read at the moment the count reaches 1: what a test without the barrier checks.
    agent.wait_metric("container_restarts_total", &series, 1.0);
    // The late extra count, on its way to the agent while the test would already pass.
    rt.cli_ok(&["restart", "-t", "5", &ctr.name]);
    agent.barrier(rt, &opts);
    let caught = catch_unwind(AssertUnwindSafe(|| {
        agent.assert_metric("container_restarts_total", &series, 1.0)
    }));
    assert!(
        caught.is_err(),
        "the assertion after the barrier passed although a second restart was applied before it"
    );
    // And the barrier did not let it pass by reading too early: the agent has the late count.
    agent.assert_metric("container_restarts_total", &series, 2.0);
}

#[test]
fn docker() {
    if let Some(rt) = DockerDaemon::shared() {
        a_late_extra_count_fails_the_assertion_after_the_barrier(&*rt);
    }
}

#[test]
fn podman() {
    if let Some(rt) = PodmanService::shared() {
        a_late_extra_count_fails_the_assertion_after_the_barrier(&*rt);
    }
}
