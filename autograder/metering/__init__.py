"""Metering: what a process of the grader's (a jailed probe, the judge, a retraining worker) uses, counted and
capped, in one place that every side imports and that imports none of them.

- ``cgroup``: a kernel-metered control group per process (memory including kernel memory, CPU time and
  quota, pids), killed and removed by group;
- ``clocks``: the time a step is charged (wall time less the host's run-queue wait, never less than its CPU
  time), and when the host starved it;
- ``processes``: process-tree control (subreaper, tree listing, the processes and RAM of a uid, killing
  everything a run left);
"""
