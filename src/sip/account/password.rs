//! The password login of own accounts: the form a user fills in, its values read and checked
//! into account data, and the flow that registers a new account or restores a stored one.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tracing::info;

use super::{Account, AccountData};
use crate::network::kit::login::{Field, Form, PasswordAccounts, Values};
use crate::network::{BridgeState, LoginData, NetworkClient, NetworkError};
use crate::sip::Shared;

/// The login form: address, authentication user, password, outbound proxy.
const FORM: Form = Form {
    instructions: "Log in with your own SIP account. Send `-` for an optional value to use the default.",
    fields: &[
        Field::required(
            "address",
            "SIP address (sip:you@example.org)",
            "the SIP address",
        ),
        Field::optional("auth_user", "authentication user (`-`: the address's user)"),
        Field::secret("password", "password", "the password"),
        Field::optional(
            "proxy",
            "outbound proxy host:port (`-`: the bridge's proxy)",
        ),
    ],
};

/// Users' own SIP accounts, for the password flow.
#[derive(Clone)]
pub(in crate::sip) struct Accounts(pub Arc<Shared>);

/// Reads the values of a login into account data.
fn parse_input(shared: &Shared, values: &Values) -> Result<AccountData, NetworkError> {
    let address = shared
        .addressing
        .contact(values.required("address")?)
        .map_err(|e| NetworkError::InvalidInput(crate::error::Reason::from_error(e)))?;
    let password = values.required("password")?.to_owned();
    let proxy = values
        .optional("proxy")
        .map(|p| {
            p.parse::<SocketAddr>().map_err(|_| {
                NetworkError::InvalidInput(
                    format!("{p:?} is not a proxy address such as 192.0.2.10:5060").into(),
                )
            })
        })
        .transpose()?;
    // The bridge only speaks to proxies the administrator trusts (and accepts requests only
    // from them).
    if let Some(p) = proxy
        && p != shared.proxy
        && !shared.trusted.contains(&p.ip())
    {
        return Err(NetworkError::InvalidInput(format!(
            "the bridge may not use {p} as a proxy; ask its administrator to add {} to sip.trusted",
            p.ip()
        ).into()));
    }
    Ok(AccountData {
        address,
        auth_user: values.optional("auth_user").map(str::to_owned),
        password,
        proxy,
    })
}

#[async_trait]
impl PasswordAccounts for Accounts {
    const NETWORK: &'static str = crate::sip::NETWORK;
    type Data = AccountData;

    fn form(&self) -> Form {
        FORM
    }

    async fn log_in(
        &self,
        user: &str,
        values: &Values,
    ) -> Result<(LoginData, Arc<dyn NetworkClient>), NetworkError> {
        let data = parse_input(&self.0, values)?;
        let account = Account::new(self.0.clone(), user, data);
        // Tracked (and an earlier login of the account replaced) only once registered, so a
        // failed attempt leaves a working login alone.
        let granted = account.register(self.0.register_seconds).await?;
        account.track();
        account.state.set(BridgeState::Connected);
        info!(user = %user, address = %account.data.address, granted, "SIP account registered");
        account.watch_contacts();
        self.0.tasks()?.spawn_loop(
            account
                .clone()
                .keep_registered(Duration::from_secs((granted.saturating_mul(3) / 4).max(5))),
        );
        Ok((account.login_data(), account))
    }

    /// Restores a stored account: registers in the background and reports the state.
    fn restore(
        &self,
        user: &str,
        data: AccountData,
    ) -> Result<Arc<dyn NetworkClient>, NetworkError> {
        let account = Account::new(self.0.clone(), user, data);
        account.track();
        self.0
            .tasks()?
            .spawn_loop(account.clone().keep_registered(Duration::ZERO));
        Ok(account)
    }
}
