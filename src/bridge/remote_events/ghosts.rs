//! Remote network → Matrix: what lives on a ghost (presence, name, picture), and the
//! limits on the ghosts and portals remote senders can make the bridge create.

use super::*;

impl Bridge {
    /// Whether the sender of a presence, profile or picture event may have a ghost (one
    /// without a ghost gets one: within the limits only, and quietly not at all over them).
    pub(super) async fn admit_quietly(
        &self,
        network: &NetworkId,
        ev: &RemoteEvent,
        taken: &mut Vec<(Limit, String)>,
    ) -> Result<Step<()>, BridgeError> {
        if let Err(limit) = self.admit_ghost(network, ev, taken)? {
            self.rate_limited(network, ev, limit, false).await;
            return Ok(Err("rate_limited"));
        }
        Ok(Ok(()))
    }

    /// The sender's presence, on their ghost.
    pub(super) async fn remote_presence(
        &self,
        network: &NetworkId,
        ev: &RemoteEvent,
        presence: &Presence,
        taken: &mut Vec<(Limit, String)>,
    ) -> Result<Outcome, BridgeError> {
        if let Err(outcome) = self.admit_quietly(network, ev, taken).await? {
            return Ok(outcome);
        }
        let ghost = self
            .ghosts
            .ensure(network, &ev.sender, ev.sender_name.as_deref())
            .await?;
        self.ghosts
            .set_presence(
                network,
                ev.via.as_deref(),
                &ghost,
                presence.state,
                presence.status.as_deref(),
            )
            .await?;
        Ok("ok")
    }

    /// The sender's name, on their ghost.
    pub(super) async fn remote_profile(
        &self,
        network: &NetworkId,
        ev: &RemoteEvent,
        taken: &mut Vec<(Limit, String)>,
    ) -> Result<Outcome, BridgeError> {
        if let Err(outcome) = self.admit_quietly(network, ev, taken).await? {
            return Ok(outcome);
        }
        self.ghosts
            .ensure(network, &ev.sender, ev.sender_name.as_deref())
            .await?;
        Ok("ok")
    }

    /// The sender's picture, on their ghost.
    pub(super) async fn remote_avatar(
        &self,
        network: &NetworkId,
        ev: &RemoteEvent,
        hash: &str,
        data: Option<&[u8]>,
        taken: &mut Vec<(Limit, String)>,
    ) -> Result<Outcome, BridgeError> {
        if let Err(outcome) = self.admit_quietly(network, ev, taken).await? {
            return Ok(outcome);
        }
        self.ghosts
            .set_avatar(network, &ev.sender, ev.sender_name.as_deref(), hash, data)
            .await
    }

    /// Whether the ghost of `user` exists (registered on the homeserver).
    pub(super) fn ghost_exists(
        &self,
        network: &NetworkId,
        user: &RemoteUserId,
    ) -> Result<bool, BridgeError> {
        let mxid = self.ghost_user_id(network, user.as_str());
        Ok(self.store.ghost(&mxid)?.is_some_and(|g| g.registered))
    }

    /// The key of the bucket of `user`'s domain, as the network groups its users.
    pub(super) fn domain_key(&self, network: &NetworkId, user: &RemoteUserId) -> String {
        let group = self
            .networks
            .get(network)
            .map(|c| c.rate_key(user))
            .unwrap_or_else(|| user.to_string());
        format!("{network}\u{1f}{group}")
    }

    /// Whether the sender of `ev` may have a ghost: always when it has one; else when the
    /// limit of new ghosts of the sender's domain admits one (messages draw on a larger
    /// budget than joins, presence and profiles). A leave never creates a ghost.
    pub(super) fn admit_ghost(
        &self,
        network: &NetworkId,
        ev: &RemoteEvent,
        taken: &mut Vec<(Limit, String)>,
    ) -> Result<Result<(), Limit>, BridgeError> {
        let leaving = matches!(
            ev.kind,
            RemoteEventKind::Membership {
                change: MembershipChange::Leave
            }
        );
        if leaving || self.ghost_exists(network, &ev.sender)? {
            return Ok(Ok(()));
        }
        let limit = match ev.kind {
            RemoteEventKind::Message { .. } => Limit::MessageGhostsPerDomain,
            _ => Limit::GhostsPerDomain,
        };
        let domain = self.domain_key(network, &ev.sender);
        let admitted = self.limits.admit(&[(limit, &domain)], Instant::now());
        if admitted.is_ok() {
            taken.push((limit, domain));
        }
        Ok(admitted)
    }

    /// Whether the message `ev` may open a new chat for `receiver`: the limits of its sender,
    /// its sender's domain and the receiver's invites must all admit it.
    pub(super) fn admit_portal(
        &self,
        network: &NetworkId,
        ev: &RemoteEvent,
        receiver: &str,
        taken: &mut Vec<(Limit, String)>,
    ) -> Result<(), Limit> {
        let sender = format!("{network}\u{1f}{}", ev.sender);
        let domain = self.domain_key(network, &ev.sender);
        self.limits.admit(
            &[
                (Limit::PortalsPerSender, &sender),
                (Limit::PortalsPerDomain, &domain),
                (Limit::InvitesPerUser, receiver),
            ],
            Instant::now(),
        )?;
        taken.extend([
            (Limit::PortalsPerSender, sender),
            (Limit::PortalsPerDomain, domain),
            (Limit::InvitesPerUser, receiver.to_owned()),
        ]);
        Ok(())
    }

    /// Counts a refusal by `limit`; with `tell`, the remote sender learns why on its network.
    pub(super) async fn rate_limited(
        &self,
        network: &NetworkId,
        ev: &RemoteEvent,
        limit: Limit,
        tell: bool,
    ) {
        self.metrics
            .rate_limited
            .with_label_values(&[limit.name()])
            .inc();
        debug!(network = %network, sender = %ev.sender, chat = %ev.chat, limit = limit.name(), "over a rate limit; nothing created");
        if tell && let Some(connector) = self.networks.get(network) {
            connector.undelivered(ev, limit.reason()).await;
        }
    }
}
