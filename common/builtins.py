"""Names of the variables every agent reports, shared by agent and balancer."""

BUILTIN_VARIABLES: tuple[str, ...] = (
    "NBPROC",       # logical CPUs
    "CPUFREQ",      # nominal (maximum) CPU frequency, MHz
    "LOADAVG",      # 1-minute load average
    "LOADAVG5",
    "LOADAVG15",
    "CPUUSED",      # % of all CPUs busy since the previous sample
    "MEMTOTAL",     # MiB
    "MEMUSED",      # MiB
    "MEMAVAIL",     # MiB
    "MEMUSEDPCT",   # % (0-100)
    "SWAPUSEDPCT",  # %
    "DISKUSEDPCT",  # % of the root file system
    "NBUSERS",      # distinct users with a login session
    "NBSESSIONS",   # login sessions
    "UPTIME",       # seconds since boot
    "DRAINED",      # true while the agent's drain-file or nologin-file exists (drain at the source)
    "DRAIN_REASON", # that file's first line; "" when not drained
)
