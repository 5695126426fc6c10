//! Password logins to users' own accounts: the form, what the user typed, the flow.
//!
//! A connector describes its form once ([`Form`]: instructions and [`Field`]s) and
//! implements [`PasswordAccounts`] (log in with the checked values; restore stored data).
//! The kit then gives it the [`LoginFlow`] ([`password_flow`]), the check of the flow asked
//! for ([`start`]), the [`LoginProcess`] ([`PasswordLogin`]), the stored [`LoginData`]
//! ([`login_data`]) and its restoring ([`load`]).

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::network::{
    LoginData, LoginField, LoginFlow, LoginId, LoginProcess, LoginStep, NetworkClient,
    NetworkError, RemoteUserId,
};

/// The ID of the password flow.
pub const PASSWORD_FLOW: &str = "password";

/// How a field's value is read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Need {
    /// Must be given: trimmed; empty or `-` is missing, and the error names it with these
    /// words ("the address" → "the address is missing").
    Required(&'static str),
    /// May be left out: trimmed; empty or `-` ("the default") is absent.
    Optional,
    /// A secret (a password), taken exactly as typed (spaces and `-` included); must not be
    /// empty, and the error names it with these words. Asked where it can be hidden.
    Secret(&'static str),
}

/// One input of a login form.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Field {
    /// The key the value is submitted under.
    pub id: &'static str,
    /// The label the user sees.
    pub label: &'static str,
    /// How its value is read.
    pub need: Need,
}

impl Field {
    /// A required field.
    pub const fn required(id: &'static str, label: &'static str, what: &'static str) -> Self {
        Self {
            id,
            label,
            need: Need::Required(what),
        }
    }

    /// An optional field.
    pub const fn optional(id: &'static str, label: &'static str) -> Self {
        Self {
            id,
            label,
            need: Need::Optional,
        }
    }

    /// A secret field.
    pub const fn secret(id: &'static str, label: &'static str, what: &'static str) -> Self {
        Self {
            id,
            label,
            need: Need::Secret(what),
        }
    }

    fn missing(&self) -> NetworkError {
        let what = match self.need {
            Need::Required(w) | Need::Secret(w) => w,
            Need::Optional => self.id,
        };
        NetworkError::InvalidInput(format!("{what} is missing").into())
    }
}

/// A login form: instructions and fields, asked in order.
#[derive(Clone, Copy, Debug)]
pub struct Form {
    /// Shown before the fields.
    pub instructions: &'static str,
    /// The fields.
    pub fields: &'static [Field],
}

impl Form {
    /// The step that asks for the fields.
    pub fn step(&self) -> LoginStep {
        LoginStep::Input {
            instructions: self.instructions.to_owned(),
            fields: self
                .fields
                .iter()
                .map(|f| LoginField::new(f.id, f.label, matches!(f.need, Need::Secret(_))))
                .collect(),
        }
    }

    /// Reads what the user typed: each value as its [`Need`] says. The first missing
    /// required or secret field, in form order, is the error.
    pub fn read(&self, input: &BTreeMap<String, String>) -> Result<Values, NetworkError> {
        let mut values = BTreeMap::new();
        for field in self.fields {
            let value = match field.need {
                Need::Required(_) | Need::Optional => crate::network::login_value(input, field.id),
                Need::Secret(_) => input.get(field.id).filter(|v| !v.is_empty()).cloned(),
            };
            match value {
                Some(v) => {
                    values.insert(field.id, v);
                }
                None if field.need == Need::Optional => {}
                None => return Err(field.missing()),
            }
        }
        Ok(Values {
            form: *self,
            values,
        })
    }
}

/// The values of a form, read by [`Form::read`].
#[derive(Clone, Debug)]
pub struct Values {
    form: Form,
    values: BTreeMap<&'static str, String>,
}

impl Values {
    /// The value of field `id`; for a required or secret field always there after
    /// [`Form::read`] (else the field's missing error, as for a field the form lacks).
    pub fn required(&self, id: &str) -> Result<&str, NetworkError> {
        match self.values.get(id) {
            Some(v) => Ok(v),
            None => Err(self
                .form
                .fields
                .iter()
                .find(|f| f.id == id)
                .map(Field::missing)
                .unwrap_or_else(|| {
                    NetworkError::Internal(format!("the login form has no field {id}").into())
                })),
        }
    }

    /// The value of an optional field, `None` when left out.
    pub fn optional(&self, id: &str) -> Option<&str> {
        self.values.get(id).map(String::as_str)
    }
}

/// A network's users' own accounts, as far as the password flow needs them.
#[async_trait]
pub trait PasswordAccounts: Clone + Send + Sync + 'static {
    /// The network's name in what a user reads ("Foo" in "the Foo flow").
    const NETWORK: &'static str;
    /// What a login stores (sealed by the core).
    type Data: Serialize + DeserializeOwned;

    /// The form the flow asks.
    fn form(&self) -> Form;

    /// Logs Matrix user `user` in with the checked values. Returns once the network took the
    /// credentials (or refused them: [`NetworkError::BadCredentials`]), with what to store
    /// (see [`login_data`]) and the client, its background work already running.
    async fn log_in(
        &self,
        user: &str,
        values: &Values,
    ) -> Result<(LoginData, Arc<dyn NetworkClient>), NetworkError>;

    /// Restores a stored login at start-up: starts its background work (which reports the
    /// state) and returns at once.
    fn restore(&self, user: &str, data: Self::Data)
    -> Result<Arc<dyn NetworkClient>, NetworkError>;
}

/// The password flow, with the name and one line shown to users.
pub fn password_flow(name: &str, description: &str) -> LoginFlow {
    LoginFlow {
        id: PASSWORD_FLOW.into(),
        name: name.into(),
        description: description.into(),
    }
}

/// Begins a password login of `user` ([`crate::network::Connector::start_login`]); another
/// flow ID is refused with the one there is.
pub fn start<P: PasswordAccounts>(
    accounts: P,
    user: &str,
    flow_id: &str,
) -> Result<Box<dyn LoginProcess>, NetworkError> {
    if flow_id != PASSWORD_FLOW {
        return Err(NetworkError::InvalidInput(
            format!(
                "unknown login flow {flow_id}; the {} flow is `{PASSWORD_FLOW}`",
                P::NETWORK
            )
            .into(),
        ));
    }
    Ok(Box::new(PasswordLogin {
        accounts,
        user: user.to_owned(),
    }))
}

/// Restores a stored login ([`crate::network::Connector::load_login`]): its data read back
/// (an internal error when it does not read), then [`PasswordAccounts::restore`].
pub fn load<P: PasswordAccounts>(
    accounts: &P,
    user: &str,
    login: &LoginData,
) -> Result<Arc<dyn NetworkClient>, NetworkError> {
    let data: P::Data = serde_json::from_value(login.data.clone()).map_err(|e| {
        NetworkError::Internal(format!("stored {} login does not read: {e}", P::NETWORK).into())
    })?;
    accounts.restore(user, data)
}

/// What to store for the login of account `address` (its ID and remote user), shown as
/// `scheme:address`.
pub fn login_data(scheme: &str, address: &str, data: &impl Serialize) -> LoginData {
    LoginData {
        id: LoginId::new(address),
        remote_user: RemoteUserId::new(address),
        remote_name: format!("{scheme}:{address}"),
        data: serde_json::to_value(data).expect("account data serialises"),
    }
}

/// The password flow of one Matrix user, driven by the core: the form, then the login.
pub struct PasswordLogin<P> {
    accounts: P,
    user: String,
}

#[async_trait]
impl<P: PasswordAccounts> LoginProcess for PasswordLogin<P> {
    fn first_step(&mut self) -> LoginStep {
        self.accounts.form().step()
    }

    async fn submit(&mut self, input: BTreeMap<String, String>) -> Result<LoginStep, NetworkError> {
        let values = self.accounts.form().read(&input)?;
        let (login, client) = self.accounts.log_in(&self.user, &values).await?;
        Ok(LoginStep::Complete { login, client })
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::network::kit::testing::IdleClient as Client;

    const FORM: Form = Form {
        instructions: "Log in.",
        fields: &[
            Field::required("address", "address", "the address"),
            Field::optional("server", "server (`-`: the default)"),
            Field::secret("password", "password", "the password"),
        ],
    };

    fn input(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn refusal(e: NetworkError) -> String {
        match e {
            NetworkError::InvalidInput(r) => r.to_string(),
            other => panic!("not a refusal of the input: {other:?}"),
        }
    }

    #[test]
    fn the_step_lists_the_fields_and_hides_secrets() {
        let LoginStep::Input {
            instructions,
            fields,
        } = FORM.step()
        else {
            panic!("an input step");
        };
        assert_eq!(instructions, "Log in.");
        assert_eq!(
            fields,
            [
                LoginField::new("address", "address", false),
                LoginField::new("server", "server (`-`: the default)", false),
                LoginField::new("password", "password", true),
            ]
        );
    }

    #[test]
    fn values_are_read_as_their_need_says() {
        // What is typed → (address, server, password) read, or the error.
        type Read<'a> = Result<(&'a str, Option<&'a str>, &'a str), &'a str>;
        let cases: &[(&[(&str, &str)], Read)] = &[
            (
                &[("address", " a@b "), ("server", "-"), ("password", " p w ")],
                Ok(("a@b", None, " p w ")),
            ),
            (
                &[("address", "a@b"), ("server", " s:1 "), ("password", "-")],
                Ok(("a@b", Some("s:1"), "-")),
            ),
            (
                &[("address", "a@b"), ("password", "x")],
                Ok(("a@b", None, "x")),
            ),
            (
                &[("address", "  "), ("password", "x")],
                Err("the address is missing"),
            ),
            (
                &[("address", "-"), ("password", "x")],
                Err("the address is missing"),
            ),
            (&[("password", "x")], Err("the address is missing")),
            (
                &[("address", "a@b"), ("password", "")],
                Err("the password is missing"),
            ),
            (&[("address", "a@b")], Err("the password is missing")),
            // The first missing field in form order.
            (&[], Err("the address is missing")),
        ];
        for (typed, expected) in cases {
            let got = FORM.read(&input(typed)).map_err(refusal);
            match (got, expected) {
                (Ok(v), Ok((address, server, password))) => {
                    assert_eq!(v.required("address").unwrap(), *address, "{typed:?}");
                    assert_eq!(v.optional("server"), *server, "{typed:?}");
                    assert_eq!(v.required("password").unwrap(), *password, "{typed:?}");
                }
                (Err(e), Err(words)) => assert_eq!(e, *words, "{typed:?}"),
                (got, _) => panic!("{typed:?}: {got:?}, expected {expected:?}"),
            }
        }
    }

    #[test]
    fn asking_for_a_field_not_read_names_it() {
        let v = FORM
            .read(&input(&[("address", "a"), ("password", "p")]))
            .unwrap();
        assert!(matches!(
            v.required("other"),
            Err(NetworkError::Internal(_))
        ));
        assert_eq!(v.optional("other"), None);
    }

    proptest! {
        /// Whatever is typed: a required value is read trimmed and never empty nor `-`, a
        /// secret exactly as typed, and a refusal names the first field that is missing.
        #[test]
        fn reading_is_trimmed_or_exact(address in "[ \t]{0,2}(-|[a-z@.]{0,6})[ \t]{0,2}",
                                       server in proptest::option::of("[ -~]{0,8}"),
                                       password in "[ -~]{0,8}") {
            let mut typed = input(&[("address", &address), ("password", &password)]);
            if let Some(s) = &server {
                typed.insert("server".into(), s.clone());
            }
            let trimmed = address.trim();
            match FORM.read(&typed) {
                Ok(v) => {
                    prop_assert_eq!(v.required("address").unwrap(), trimmed);
                    prop_assert!(!trimmed.is_empty() && trimmed != "-");
                    prop_assert_eq!(v.required("password").unwrap(), password.as_str());
                    let s = server.as_deref().map(str::trim).filter(|s| !s.is_empty() && *s != "-");
                    prop_assert_eq!(v.optional("server"), s);
                }
                Err(e) => {
                    let words = refusal(e);
                    if trimmed.is_empty() || trimmed == "-" {
                        prop_assert_eq!(words, "the address is missing");
                    } else {
                        prop_assert!(password.is_empty());
                        prop_assert_eq!(words, "the password is missing");
                    }
                }
            }
        }
    }

    #[derive(Clone, Default)]
    struct Accounts {
        restored: Arc<std::sync::Mutex<Vec<(String, String)>>>,
    }

    #[derive(Serialize, serde::Deserialize)]
    struct Data {
        address: String,
    }

    #[async_trait]
    impl PasswordAccounts for Accounts {
        const NETWORK: &'static str = "Test";
        type Data = Data;

        fn form(&self) -> Form {
            FORM
        }

        async fn log_in(
            &self,
            _user: &str,
            values: &Values,
        ) -> Result<(LoginData, Arc<dyn NetworkClient>), NetworkError> {
            if values.required("password")? != "right" {
                return Err(NetworkError::BadCredentials("wrong password".into()));
            }
            let address = values.required("address")?;
            let data = Data {
                address: address.to_owned(),
            };
            Ok((login_data("test", address, &data), Arc::new(Client)))
        }

        fn restore(&self, user: &str, data: Data) -> Result<Arc<dyn NetworkClient>, NetworkError> {
            self.restored
                .lock()
                .unwrap()
                .push((user.to_owned(), data.address));
            Ok(Arc::new(Client))
        }
    }

    #[tokio::test]
    async fn the_flow_asks_logs_in_and_restores() {
        let accounts = Accounts::default();
        let e = start(accounts.clone(), "@a:hs", "oauth").err().unwrap();
        assert_eq!(
            refusal(e),
            "unknown login flow oauth; the Test flow is `password`"
        );
        let mut login = start(accounts.clone(), "@a:hs", PASSWORD_FLOW).unwrap();
        assert!(matches!(login.first_step(), LoginStep::Input { .. }));
        let missing = login.submit(input(&[("password", "right")])).await;
        assert_eq!(refusal(missing.err().unwrap()), "the address is missing");
        let wrong = login
            .submit(input(&[("address", "a@b"), ("password", "wrong")]))
            .await;
        assert!(matches!(wrong, Err(NetworkError::BadCredentials(_))));
        let Ok(LoginStep::Complete { login: data, .. }) = login
            .submit(input(&[("address", " a@b "), ("password", "right")]))
            .await
        else {
            panic!("logged in");
        };
        assert_eq!(data.id, LoginId::new("a@b"));
        assert_eq!(data.remote_user, RemoteUserId::new("a@b"));
        assert_eq!(data.remote_name, "test:a@b");
        load(&accounts, "@a:hs", &data).unwrap();
        assert_eq!(
            *accounts.restored.lock().unwrap(),
            [("@a:hs".to_owned(), "a@b".to_owned())]
        );
        let broken = LoginData {
            data: serde_json::json!(7),
            ..data
        };
        let e = load(&accounts, "@a:hs", &broken).err().unwrap();
        assert!(matches!(e, NetworkError::Internal(_)));
        assert!(
            e.to_string().contains("stored Test login does not read"),
            "{e}"
        );
    }

    #[test]
    fn the_flow_is_the_password_flow() {
        let flow = password_flow("Test account", "Log in with your own account.");
        assert_eq!(flow.id, PASSWORD_FLOW);
        assert_eq!(flow.name, "Test account");
    }
}
