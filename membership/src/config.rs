//! Timing and size tunables, the LAN preset and their validation.

use std::fmt;
use std::num::{NonZeroU8, NonZeroUsize};
use std::time::Duration;

/// Largest gossip payload a swimlock datagram can carry: the UDP payload
/// limit swimlock uses minus what a sealed frame adds (envelope, kind, tag).
pub const MAX_GOSSIP_PAYLOAD: usize = swimlock_wire::MAX_DATAGRAM - swimlock_wire::frame::OVERHEAD;

/// Largest cluster that retransmits updates exactly
/// [`Config::max_transmissions`] times.
pub const SMALL_CLUSTER: usize = 16;

/// Every tunable of the membership layer.
///
/// Durations are spans of the driver's clock (the `now` passed to
/// [`Membership`](crate::Membership)). Start from [`Config::lan`] and change
/// what you need; [`Config::validate`] names the first field that is wrong.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// How often this node probes one member (SWIM protocol period).
    /// Detection time grows linearly with it.
    pub probe_period: Duration,
    /// How long to wait for a direct probe's ack before asking other
    /// members to probe indirectly. Must be shorter than `probe_period`.
    pub probe_rtt: Duration,
    /// How many members are asked to probe indirectly; also the fan-out of
    /// on-demand gossip.
    pub num_indirect_probes: NonZeroUsize,
    /// How long a suspected member has to refute the suspicion before it is
    /// declared down. A pause longer than this gets a live member declared
    /// down (it then rejoins, which is reported as a merge).
    pub suspect_to_down_after: Duration,
    /// How often membership updates are pushed to `gossip_fanout` members,
    /// on top of what probes piggyback.
    pub gossip_interval: Duration,
    /// Members picked per `gossip_interval`.
    pub gossip_fanout: NonZeroUsize,
    /// How many times one membership update is retransmitted in a cluster
    /// of up to [`SMALL_CLUSTER`] members; larger clusters retransmit more
    /// when `scale_transmissions` is set (see [`Config::transmissions_for`]).
    /// A member misses an update with odds of roughly e^-max_transmissions,
    /// and then has to find out by its own probe round (up to cluster size
    /// × probe_period). With 12 fixed, a cold start of 1,000 simulated nodes
    /// left a node or two without a member or two for 50 s and more, and a
    /// split into halves did not settle within 60 s; with 20, one view after
    /// 2.8-3.2 s and the split in 2.4 s
    /// (`swimlock sim --scale --nodes 1000 --max-transmissions 20`). More
    /// transmissions cost nothing at idle and lengthen the gossip after a
    /// change, not its rate.
    pub max_transmissions: NonZeroU8,
    /// Whether clusters larger than [`SMALL_CLUSTER`] members retransmit
    /// each update more than `max_transmissions` times (see
    /// [`Config::transmissions_for`]); off, every size gets
    /// `max_transmissions`.
    pub scale_transmissions: bool,
    /// How often foca re-announces itself to one random active member (a
    /// full-state exchange that repairs divergent member lists).
    pub announce_interval: Duration,
    /// How often foca announces to members it believes are down, so that
    /// the sides of a healed partition find each other again.
    pub announce_to_down_interval: Duration,
    /// Down members announced to per `announce_to_down_interval`.
    pub announce_to_down_fanout: NonZeroUsize,
    /// How often this node announces to every configured seed that is not an
    /// active member. Covers the first join, a node left alone (foca stops
    /// its own timers when no member is left) and speeds up healing.
    pub seed_announce_interval: Duration,
    /// How long foca remembers a down member (and keeps announcing to it).
    /// A partition longer than this heals only through seeds. `None` keeps
    /// them for ever (bounded: one entry per address).
    pub remove_down_after: Option<Duration>,
    /// A view is installed only after the live member set has not changed
    /// for this long, so a heal cascade (renewals, renames, ups) becomes one
    /// merge view instead of several. About two probe periods.
    pub view_settle: Duration,
    /// Upper bound on how long a changed member set may stay uninstalled
    /// while it keeps changing (liveness under churn).
    pub view_max_delay: Duration,
    /// Largest gossip payload this node sends or accepts, in bytes. The
    /// LAN default, 1,300, keeps a sealed datagram (94 bytes more) under
    /// 1,400 bytes, so gossip is not fragmented on an Ethernet MTU.
    pub max_packet_size: NonZeroUsize,
}

impl Config {
    /// Defaults for a LAN (sub-millisecond to few-millisecond round trips).
    ///
    /// Measured in the crate's simulated network (1–3 ms one-way delay, see
    /// the crate docs for the figures): a crashed member leaves every view
    /// in about one second. A process paused for longer than
    /// `suspect_to_down_after` (400 ms) is declared down and rejoins.
    pub fn lan() -> Config {
        Config {
            probe_period: Duration::from_millis(100),
            probe_rtt: Duration::from_millis(40),
            num_indirect_probes: NonZeroUsize::new(3).expect("non-zero"),
            suspect_to_down_after: Duration::from_millis(400),
            gossip_interval: Duration::from_millis(50),
            gossip_fanout: NonZeroUsize::new(3).expect("non-zero"),
            max_transmissions: NonZeroU8::new(12).expect("non-zero"),
            scale_transmissions: true,
            announce_interval: Duration::from_secs(10),
            announce_to_down_interval: Duration::from_millis(500),
            announce_to_down_fanout: NonZeroUsize::new(2).expect("non-zero"),
            seed_announce_interval: Duration::from_secs(1),
            remove_down_after: Some(Duration::from_secs(24 * 60 * 60)),
            view_settle: Duration::from_millis(200),
            view_max_delay: Duration::from_secs(2),
            max_packet_size: NonZeroUsize::new(1300).expect("non-zero"),
        }
    }

    /// Checks the values against each other; the error names the field.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let positive = [
            ("probe_period", self.probe_period),
            ("probe_rtt", self.probe_rtt),
            ("suspect_to_down_after", self.suspect_to_down_after),
            ("gossip_interval", self.gossip_interval),
            ("announce_interval", self.announce_interval),
            ("announce_to_down_interval", self.announce_to_down_interval),
            ("seed_announce_interval", self.seed_announce_interval),
            ("view_settle", self.view_settle),
            ("view_max_delay", self.view_max_delay),
        ];
        for (field, value) in positive {
            if value.is_zero() {
                return Err(ConfigError::new(field, "must be greater than zero"));
            }
        }
        if self.probe_rtt >= self.probe_period {
            return Err(ConfigError::new(
                "probe_rtt",
                format!(
                    "{:?} must be shorter than probe_period ({:?}): the indirect probe needs the rest of the period",
                    self.probe_rtt, self.probe_period
                ),
            ));
        }
        if self.view_max_delay < self.view_settle {
            return Err(ConfigError::new(
                "view_max_delay",
                format!("{:?} must be at least view_settle ({:?})", self.view_max_delay, self.view_settle),
            ));
        }
        if self.remove_down_after.is_some_and(|d| d.is_zero()) {
            return Err(ConfigError::new("remove_down_after", "must be greater than zero (or None)"));
        }
        let size = self.max_packet_size.get();
        if !(512..=MAX_GOSSIP_PAYLOAD).contains(&size) {
            return Err(ConfigError::new(
                "max_packet_size",
                format!("{size} is outside 512..={MAX_GOSSIP_PAYLOAD}"),
            ));
        }
        Ok(())
    }

    /// The least time from a member's last message to the install of a
    /// view without it: the suspicion timeout plus the view settle time,
    /// less a probe period (a probe sent just before the member stopped may
    /// already have started the suspicion). The lock layer's leases rely on
    /// it (`swimlock_lock::Config::detection_min`).
    pub fn detection_min(&self) -> Duration {
        (self.suspect_to_down_after + self.view_settle).saturating_sub(self.probe_period)
    }

    /// Retransmissions of one update in a cluster of `members` (this node
    /// included): `max_transmissions` up to [`SMALL_CLUSTER`] members, then
    /// `max_transmissions + ceil(2 ln(members / SMALL_CLUSTER))` if
    /// `scale_transmissions` is set. A cold start leaves about members² ×
    /// e^-transmissions (node, member) pairs unlearnt, and that count stays
    /// what it is at 16 members with 12: 15 transmissions at 64 members, 21
    /// at 1,000.
    pub fn transmissions_for(&self, members: usize) -> NonZeroU8 {
        if !self.scale_transmissions || members <= SMALL_CLUSTER {
            return self.max_transmissions;
        }
        let extra = (2.0 * (members as f64 / SMALL_CLUSTER as f64).ln()).ceil() as u16;
        let total = (u16::from(self.max_transmissions.get()) + extra).min(u16::from(u8::MAX));
        NonZeroU8::new(total as u8).unwrap_or(self.max_transmissions)
    }

    /// The foca configuration these tunables map to, for a cluster of
    /// `members` (see [`Config::transmissions_for`]).
    pub(crate) fn to_foca(&self, members: usize) -> foca::Config {
        let mut c = foca::Config::simple();
        c.probe_period = self.probe_period;
        c.probe_rtt = self.probe_rtt;
        c.num_indirect_probes = self.num_indirect_probes;
        c.max_transmissions = self.transmissions_for(members);
        c.suspect_to_down_after = self.suspect_to_down_after;
        c.remove_down_after = self.remove_down_after;
        c.max_packet_size = self.max_packet_size;
        // Healing needs all of: renewable identities (see `identity`),
        // telling down members they are down, announcing to down members
        // and remembering down members longer than a partition lasts.
        c.notify_down_members = true;
        c.periodic_announce =
            Some(foca::PeriodicParams { frequency: self.announce_interval, num_members: NonZeroUsize::MIN });
        c.periodic_announce_to_down_members = Some(foca::PeriodicParams {
            frequency: self.announce_to_down_interval,
            num_members: self.announce_to_down_fanout,
        });
        c.periodic_gossip =
            Some(foca::PeriodicParams { frequency: self.gossip_interval, num_members: self.gossip_fanout });
        c
    }
}

impl Default for Config {
    fn default() -> Self {
        Config::lan()
    }
}

/// A configuration value that cannot work, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    /// The offending field (of [`Config`], or an argument of
    /// [`Membership::new`](crate::Membership::new) such as `name`).
    pub field: &'static str,
    /// What is wrong with it.
    pub reason: String,
}

impl ConfigError {
    pub(crate) fn new(field: &'static str, reason: impl Into<String>) -> ConfigError {
        ConfigError { field, reason: reason.into() }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid membership setting `{}`: {}", self.field, self.reason)
    }
}

impl std::error::Error for ConfigError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lan_is_valid() {
        Config::lan().validate().unwrap();
    }

    #[test]
    fn errors_name_the_field() {
        let mut c = Config::lan();
        c.probe_rtt = c.probe_period;
        let e = c.validate().unwrap_err();
        assert_eq!(e.field, "probe_rtt");
        assert!(e.to_string().contains("`probe_rtt`"));

        let mut c = Config::lan();
        c.view_settle = Duration::ZERO;
        assert_eq!(c.validate().unwrap_err().field, "view_settle");

        let mut c = Config::lan();
        c.max_packet_size = NonZeroUsize::new(70_000).unwrap();
        assert_eq!(c.validate().unwrap_err().field, "max_packet_size");
    }

    #[test]
    fn transmissions_grow_only_past_sixteen_members() {
        let c = Config::lan();
        let at = |n| c.transmissions_for(n).get();
        assert!((1..=SMALL_CLUSTER).all(|n| at(n) == 12));
        assert_eq!((at(17), at(32), at(64), at(1000), at(10_000)), (13, 14, 15, 21, 25));
        let fixed = Config { scale_transmissions: false, ..Config::lan() };
        assert_eq!(fixed.transmissions_for(1000).get(), 12);
        let mut c = Config::lan();
        c.max_transmissions = NonZeroU8::new(250).unwrap();
        assert_eq!(c.transmissions_for(10_000).get(), 255);
    }
}
