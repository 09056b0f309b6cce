//! Authentication, organisations, users and tokens.

use cleanroom_core::audit::Action;
use cleanroom_core::audit::Outcome;
use cleanroom_core::entities::{Organisation, Token, User};
use cleanroom_core::ids::{OrgId, TokenId, UserId};
use cleanroom_core::names::{OrgName, UserName};
use cleanroom_core::party::UserRole;

use super::*;
use crate::ServiceError;
use crate::token::{IssuedToken, PresentedToken};

impl CleanRoom {
    // ------------------------------------------------------------------ authentication

    /// Creates the operator organisation and its first admin. Works once per data directory.
    pub async fn init_operator(
        &self,
        org_name: &str,
        user_name: &str,
    ) -> Result<(Organisation, User, IssuedToken), ServiceError> {
        let org = Organisation {
            id: OrgId::new(),
            name: OrgName::parse(org_name)?,
            is_operator: true,
            created_at: now(),
        };
        let (user, issued, token) = self.new_user(org.id, user_name, UserRole::Admin, "init")?;
        let ctx = AuditCtx::system(
            format!("{}/{}", org.name, user.name),
            Action::ServerInit,
            org.name.as_str(),
        );
        let audit = ctx.entry(
            Outcome::Allowed,
            format!(
                "operator organisation and admin created; token {}",
                issued.id
            ),
        );
        self.meta
            .bootstrap_operator(&org, &user, &token, audit)
            .await?;
        Ok((org, user, issued))
    }

    fn new_user(
        &self,
        org: OrgId,
        name: &str,
        role: UserRole,
        label: &str,
    ) -> Result<(User, IssuedToken, Token), ServiceError> {
        let user = User {
            id: UserId::new(),
            org_id: org,
            name: UserName::parse(name)?,
            role,
            created_at: now(),
        };
        let (issued, token) = Self::new_token(user.id, label)?;
        Ok((user, issued, token))
    }

    fn new_token(user: UserId, label: &str) -> Result<(IssuedToken, Token), ServiceError> {
        Self::new_token_until(user, label, None, None)
    }

    fn new_token_until(
        user: UserId,
        label: &str,
        expires_at: Option<String>,
        parent_id: Option<TokenId>,
    ) -> Result<(IssuedToken, Token), ServiceError> {
        let label = label.trim();
        if label.chars().count() > 100 || label.chars().any(char::is_control) {
            return Err(ServiceError::InvalidInput(
                "a token label is at most 100 printable characters".into(),
            ));
        }
        let issued = IssuedToken::generate()?;
        let token = Token {
            id: issued.id,
            user_id: user,
            label: label.to_owned(),
            secret_hash: issued.secret_hash(),
            created_at: now(),
            revoked_at: None,
            expires_at,
            parent_id,
        };
        Ok((issued, token))
    }

    /// Resolves a bearer token to a principal. Failures are audited in the system chain
    /// without the token's secret.
    pub async fn authenticate(&self, bearer: Option<&str>) -> Result<Principal, ServiceError> {
        let ctx = AuditCtx::system("anonymous", Action::Auth, "-");
        let Some(bearer) = bearer else {
            let e = ServiceError::Unauthenticated(
                "send an API token in the Authorization header: `Bearer crt_…`".into(),
            );
            return Err(self.refuse(&ctx, e).await);
        };
        let presented = self.audited(&ctx, PresentedToken::parse(bearer)).await?;
        let found = self.meta.authenticate(presented.id).await?;
        let ctx = ctx.on(presented.id.to_string());
        match found {
            Some(a) if presented.matches(&a.token.secret_hash) => {
                if a.token.revoked_at.is_some() {
                    let e = ServiceError::Unauthenticated("this token has been revoked".into());
                    return Err(self.refuse(&ctx, e).await);
                }
                // Stored times are RFC 3339 UTC with milliseconds: text order is time order.
                if a.token
                    .expires_at
                    .as_deref()
                    .is_some_and(|exp| exp <= now().as_str())
                {
                    let e = ServiceError::Unauthenticated(
                        "this session has expired; sign in again".into(),
                    );
                    return Err(self.refuse(&ctx, e).await);
                }
                Ok(Principal {
                    user: a.user,
                    org: a.org,
                    token_id: a.token.id,
                    parent_token_id: a.token.parent_id,
                })
            }
            _ => {
                let e = ServiceError::Unauthenticated("unknown token".into());
                Err(self.refuse(&ctx, e).await)
            }
        }
    }

    // ------------------------------------------------------------------ organisations, users, tokens

    /// Creates an organisation with its first admin. Operator only.
    pub async fn create_org(
        &self,
        p: &Principal,
        name: &str,
        admin_name: &str,
    ) -> Result<(Organisation, User, IssuedToken), ServiceError> {
        let ctx = AuditCtx::by(p, Action::OrgCreate, name);
        if !(p.org.is_operator && p.is_admin()) {
            let e = ServiceError::Forbidden(
                "only the operator's admins may create organisations".into(),
            );
            return Err(self.refuse(&ctx, e).await);
        }
        let org_name = self.audited(&ctx.on("-"), OrgName::parse(name)).await?;
        let org = Organisation {
            id: OrgId::new(),
            name: org_name,
            is_operator: false,
            created_at: now(),
        };
        let admin = self.new_user(org.id, admin_name, UserRole::Admin, "initial admin token");
        let ctx = ctx.on(org.name.as_str());
        let (user, issued, token) = self.audited(&ctx, admin).await?;
        let audit = ctx.entry(
            Outcome::Allowed,
            format!("admin {}; token {}", user.name, issued.id),
        );
        self.meta.create_org(&org, &user, &token, audit).await?;
        Ok((org, user, issued))
    }

    /// Every organisation on the server (names only: a directory to invite from).
    pub async fn list_orgs(&self, _p: &Principal) -> Result<Vec<Organisation>, ServiceError> {
        Ok(self.meta.list_orgs().await?)
    }

    /// Adds a user to the caller's organisation. Admins only.
    pub async fn create_user(
        &self,
        p: &Principal,
        name: &str,
        role: UserRole,
    ) -> Result<(User, IssuedToken), ServiceError> {
        let ctx = AuditCtx::by(p, Action::UserCreate, name);
        if !p.is_admin() {
            let e =
                ServiceError::Forbidden("only admins of your organisation may add users".into());
            return Err(self.refuse(&ctx, e).await);
        }
        let new = self.new_user(p.org.id, name, role, "initial token");
        let (user, issued, token) = self.audited(&ctx.on("-"), new).await?;
        let audit = ctx.on(format!("{}/{}", p.org.name, user.name)).entry(
            Outcome::Allowed,
            format!("role {}; token {}", role.as_str(), issued.id),
        );
        self.meta.create_user(&user, &token, audit).await?;
        Ok((user, issued))
    }

    pub async fn list_users(&self, p: &Principal) -> Result<Vec<User>, ServiceError> {
        Ok(self.meta.list_users(p.org.id).await?)
    }

    /// Issues another token to the caller.
    pub async fn create_token(
        &self,
        p: &Principal,
        label: &str,
    ) -> Result<(IssuedToken, Token), ServiceError> {
        let ctx = AuditCtx::by(p, Action::TokenCreate, "-");
        let (issued, token) = self
            .audited(&ctx, Self::new_token(p.user.id, label))
            .await?;
        let audit = ctx.on(issued.id.to_string()).entry(Outcome::Allowed, "");
        self.meta.create_token(&token, audit).await?;
        Ok((issued, token))
    }

    /// Starts a console session for the caller: a token of the caller's user that expires
    /// after `ttl` (the server keeps it in an HttpOnly cookie). Audited as `session.start`,
    /// naming the token it was started with.
    pub async fn start_session(
        &self,
        p: &Principal,
        ttl: std::time::Duration,
    ) -> Result<(IssuedToken, Token), ServiceError> {
        let ctx = AuditCtx::by(p, Action::SessionStart, "-");
        let expires = cleanroom_meta::after_now(ttl);
        // Tied to the API token behind the caller's credential (the caller's own token, or the
        // one a session it signs in with was started with), so that revoking it ends this too.
        let parent = p.parent_token_id.unwrap_or(p.token_id);
        let label = format!("console session (signed in with token {parent})");
        let (issued, token) = self
            .audited(
                &ctx,
                Self::new_token_until(p.user.id, &label, Some(expires.clone()), Some(parent)),
            )
            .await?;
        let audit = ctx
            .on(issued.id.to_string())
            .entry(Outcome::Allowed, format!("expires {expires}"));
        self.meta.create_token(&token, audit).await?;
        Ok((issued, token))
    }

    /// Ends the caller's session: revokes the token it authenticated with. Audited as
    /// `session.end`.
    pub async fn end_session(&self, p: &Principal) -> Result<(), ServiceError> {
        let ctx = AuditCtx::by(p, Action::SessionEnd, p.token_id.to_string());
        let audit = ctx.entry(Outcome::Allowed, "");
        Ok(self.meta.revoke_token(p.token_id, p.org.id, audit).await?)
    }

    /// Tokens the caller may see: all of its organisation's for an admin, its own otherwise.
    pub async fn list_tokens(&self, p: &Principal) -> Result<Vec<(Token, User)>, ServiceError> {
        let all = self.meta.list_tokens(p.org.id).await?;
        Ok(all
            .into_iter()
            .filter(|(_, u)| p.is_admin() || u.id == p.user.id)
            .collect())
    }

    /// Revokes a token of the caller's (or, for an admin, of its organisation's users).
    pub async fn revoke_token(&self, p: &Principal, id: &str) -> Result<(), ServiceError> {
        let ctx = AuditCtx::by(p, Action::TokenRevoke, "-");
        let id = self.audited(&ctx, TokenId::parse(id)).await?;
        let ctx = ctx.on(id.to_string());
        let mine = self
            .meta
            .list_tokens(p.org.id)
            .await?
            .into_iter()
            .find(|(t, _)| t.id == id);
        let allowed = match &mine {
            Some((_, holder)) => p.is_admin() || holder.id == p.user.id,
            None => false,
        };
        if !allowed {
            let e = ServiceError::NotFound(format!("no token {id} that you may revoke"));
            return Err(self.refuse(&ctx, e).await);
        }
        let audit = ctx.entry(Outcome::Allowed, "");
        Ok(self.meta.revoke_token(id, p.org.id, audit).await?)
    }
}
