//! XMPP → bridge: IQs to the component and gateway addresses (disco, vCard, version, ping),
//! and answers to the bridge's own requests.

use super::*;

impl Handler {
    pub(super) fn iq(&self, iq: Iq) -> Vec<Stanza> {
        let (from, to, id, payload) = match iq {
            Iq::Get {
                from,
                to,
                id,
                payload,
            } => (from, to, id, payload),
            Iq::Set { from, to, id, .. } => {
                return vec![error_reply(
                    from,
                    to,
                    id,
                    DefinedCondition::ServiceUnavailable,
                )];
            }
            Iq::Result {
                id, payload, from, ..
            } => {
                self.shared.iqs.answer(&id, from.as_ref(), Ok(payload));
                return Vec::new();
            }
            Iq::Error {
                id, error, from, ..
            } => {
                self.shared.iqs.answer(
                    &id,
                    from.as_ref(),
                    Err(crate::xmpp::IqRefused {
                        condition: error.defined_condition,
                    }),
                );
                return Vec::new();
            }
        };
        let to_component = to.as_ref().is_some_and(|t| t.node().is_none());
        let result = |payload: Option<Element>| -> Stanza {
            Iq::Result {
                from: to.clone(),
                to: from.clone(),
                id: id.clone(),
                payload,
            }
            .into()
        };
        let hosting = !self.shared.hosted.aliases().is_empty();
        let hosted_room = to
            .as_ref()
            .filter(|t| t.node().is_some_and(|n| n.as_str().starts_with('#')))
            .and_then(|t| self.shared.allowed_alias(&t.to_bare()));
        if payload.is("query", ns::DISCO_INFO) && payload.attr("node").is_none() {
            let mut identities = Vec::new();
            let mut features = payloads::features(payloads::Side::Gateway);
            if let Some(alias) = &hosted_room {
                identities.push(Identity::new("conference", "text", "en", alias.clone()));
                features = [
                    ns::DISCO_INFO,
                    ns::MUC,
                    "muc_open",
                    "muc_nonanonymous",
                    "muc_unmoderated",
                    "muc_public",
                ]
                .iter()
                .map(|f| f.to_string())
                .collect();
            } else if to_component {
                identities.push(Identity::new(
                    "gateway",
                    "matrix",
                    "en",
                    "isthmus Matrix gateway",
                ));
                if hosting {
                    identities.push(Identity::new("conference", "text", "en", "Matrix rooms"));
                    features.insert(ns::MUC.to_owned());
                }
            } else {
                identities.push(Identity::new_anonymous::<_, _, String, String>(
                    "client", "pc",
                ));
            }
            let info = DiscoInfoResult {
                node: None,
                identities,
                features,
                extensions: Vec::new(),
            };
            return vec![result(Some(info.into()))];
        }
        if payload.is("query", ns::DISCO_ITEMS) && payload.attr("node").is_none() {
            let items = if to_component {
                self.shared
                    .hosted
                    .aliases()
                    .iter()
                    .filter_map(|alias| {
                        let jid = self.shared.addressing.hosted_room(alias)?;
                        Some(xmpp_parsers::disco::Item {
                            jid: Jid::from(jid),
                            node: None,
                            name: Some(alias.clone()),
                        })
                    })
                    .collect()
            } else {
                Vec::new()
            };
            let items = DiscoItemsResult {
                node: None,
                items,
                rsm: None,
            };
            return vec![result(Some(items.into()))];
        }
        if payload.is("vCard", avatar::VCARD) {
            let user = to
                .as_ref()
                .filter(|t| t.node().is_some())
                .and_then(|t| self.shared.addressing.matrix_user(&t.to_bare()));
            return match user {
                Some(user) => {
                    self.answer_vcard(from, to, id, user);
                    Vec::new()
                }
                None => vec![error_reply(from, to, id, DefinedCondition::ItemNotFound)],
            };
        }
        if payload.is("query", ns::VERSION) {
            let v = VersionResult {
                name: "isthmus".into(),
                version: env!("CARGO_PKG_VERSION").into(),
                os: None,
            };
            return vec![result(Some(v.into()))];
        }
        if payload.is("ping", ns::PING) {
            // A self-ping (XEP-0410) to a hosted room's occupant address: only a joined
            // occupant gets a result, so clients notice they must rejoin (after a restart).
            if let (Some(room), Some(t)) = (&hosted_room, &to)
                && t.resource().is_some()
            {
                let joined = from.as_ref().is_some_and(|f| {
                    self.shared
                        .hosted
                        .is_occupant(&t.to_bare().to_string(), &f.to_string())
                });
                if !joined {
                    tracing::debug!(room, "self-ping from someone not in the hosted room");
                    return vec![error_reply(from, to, id, DefinedCondition::NotAcceptable)];
                }
            }
            return vec![result(None)];
        }
        vec![error_reply(
            from,
            to,
            id,
            DefinedCondition::ServiceUnavailable,
        )]
    }
}
