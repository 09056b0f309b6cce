//! Collaborations: create, invite, accept, decline, close; memberships and who may act.

use cleanroom_core::audit::Action;
use cleanroom_core::audit::Outcome;
use cleanroom_core::entities::{Collaboration, Membership};
use cleanroom_core::ids::CollaborationId;
use cleanroom_core::names::{CollaborationName, OrgName};
use cleanroom_core::party::{Abilities, Ability, CollaborationStatus, MemberStatus};
use cleanroom_meta::MetaError;
use cleanroom_storage::SecretKey;

use super::*;
use crate::ServiceError;

/// What a use case asks of the caller's membership beyond its acceptance.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Need {
    ability: Option<Ability>,
    open: bool,
}

impl Need {
    /// Reading: no ability, and a closed collaboration will do.
    pub(crate) fn read() -> Self {
        Need {
            ability: None,
            open: false,
        }
    }

    /// Acting in an open collaboration.
    pub(crate) fn open() -> Self {
        Need {
            ability: None,
            open: true,
        }
    }

    /// Acting with `ability` in an open collaboration.
    pub(crate) fn open_with(ability: Ability) -> Self {
        Need {
            ability: Some(ability),
            open: true,
        }
    }
}

impl CleanRoom {
    // ------------------------------------------------------------------ collaborations

    /// Creates a collaboration; the caller's organisation joins it with `abilities`.
    pub async fn create_collaboration(
        &self,
        p: &Principal,
        name: &str,
        description: &str,
        abilities: Abilities,
    ) -> Result<Collaboration, ServiceError> {
        let ctx = AuditCtx::by(p, Action::CollaborationCreate, "-");
        let name = self.audited(&ctx, CollaborationName::parse(name)).await?;
        let ctx = ctx.on(name.as_str());
        let description = self
            .audited(&ctx, self.check_description(description))
            .await?;
        if abilities.is_empty() {
            let e =
                ServiceError::InvalidInput("give your organisation at least one ability".into());
            return Err(self.refuse(&ctx, e).await);
        }
        let c = Collaboration {
            id: CollaborationId::new(),
            name,
            description,
            creator_org_id: p.org.id,
            status: CollaborationStatus::Open,
            created_at: now(),
            closed_at: None,
        };
        let key = SecretKey::generate()?;
        let wrapped = self.master.wrap(&key, &collab_purpose(c.id))?;
        let creator = Membership {
            collaboration_id: c.id,
            org_id: p.org.id,
            org_name: p.org.name.clone(),
            abilities,
            status: MemberStatus::Active,
            invited_at: c.created_at.clone(),
            joined_at: Some(c.created_at.clone()),
        };
        let audit = ctx.in_chain(c.id).entry(
            Outcome::Allowed,
            format!("creator {} with abilities {}", p.org.name, abilities),
        );
        self.meta
            .create_collaboration(&c, &wrapped, &creator, audit)
            .await?;
        Ok(c)
    }

    fn check_description(&self, d: &str) -> Result<String, ServiceError> {
        let d = d.trim();
        if d.chars().count() > self.limits.max_description_chars {
            return Err(ServiceError::InvalidInput(format!(
                "the description is longer than {} characters",
                self.limits.max_description_chars
            )));
        }
        if d.chars().any(|c| c.is_control() && c != '\n') {
            return Err(ServiceError::InvalidInput(
                "the description contains control characters".into(),
            ));
        }
        Ok(d.to_owned())
    }

    /// Collaborations the caller's organisation is in or invited to.
    pub async fn list_collaborations(
        &self,
        p: &Principal,
    ) -> Result<Vec<(Collaboration, Membership)>, ServiceError> {
        Ok(self
            .meta
            .list_collaborations(p.org.id)
            .await?
            .into_iter()
            .filter(|(_, m)| m.status != MemberStatus::Declined)
            .collect())
    }

    /// Looks up a collaboration for the caller. Outsiders (and organisations that declined) get
    /// the same answer as for a collaboration that does not exist, and the attempt is audited
    /// under `ctx` (in the system chain) with the collaboration as its target.
    pub(crate) async fn membership_of(
        &self,
        p: &Principal,
        collab: &str,
        ctx: &AuditCtx,
    ) -> Result<(Collaboration, Membership), ServiceError> {
        let id = match CollaborationId::parse(collab) {
            Ok(id) => id,
            Err(_) => self.collaboration_named(p, collab, ctx).await?,
        };
        let found = match self.meta.get_collaboration(id).await? {
            Some(c) => self
                .meta
                .get_membership(id, p.org.id)
                .await?
                .filter(|m| m.status != MemberStatus::Declined)
                .map(|m| (c, m)),
            None => None,
        };
        match found {
            Some(x) => Ok(x),
            None => Err(self
                .refuse(&ctx.on(id.to_string()), not_found_collab())
                .await),
        }
    }

    /// A collaboration named by its name rather than its id: among those the caller's
    /// organisation is in or invited to (so a name reveals nothing about others), exactly one
    /// must have it.
    async fn collaboration_named(
        &self,
        p: &Principal,
        name: &str,
        ctx: &AuditCtx,
    ) -> Result<CollaborationId, ServiceError> {
        // The entry omits the input: a name may be anything the caller typed.
        let ctx = ctx.on("-");
        let mine: Vec<Collaboration> = self
            .list_collaborations(p)
            .await?
            .into_iter()
            .map(|(c, _)| c)
            .filter(|c| c.name.as_str() == name)
            .collect();
        match mine.as_slice() {
            [one] => Ok(one.id),
            // The same answer as for an id that names nothing.
            [] => Err(self.refuse(&ctx, not_found_collab()).await),
            several => {
                let e = ServiceError::InvalidInput(format!(
                    "{} collaborations you are in are named {name}: use an id ({})",
                    several.len(),
                    several
                        .iter()
                        .map(|c| c.id.to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
                Err(self.refuse(&ctx, e).await)
            }
        }
    }

    /// Like [`Self::membership_of`] but also requires an accepted membership and what `need`
    /// asks for. Returns `ctx` moved into the collaboration's chain, where refusals go from
    /// here on.
    pub(crate) async fn active_member(
        &self,
        p: &Principal,
        collab: &str,
        ctx: AuditCtx,
        need: Need,
    ) -> Result<(Collaboration, Membership, AuditCtx), ServiceError> {
        let (c, m) = self.membership_of(p, collab, &ctx).await?;
        let ctx = ctx.in_chain(c.id);
        let problem = if m.status != MemberStatus::Active {
            Some(ServiceError::Forbidden(
                "your organisation has not accepted the invitation to this collaboration".into(),
            ))
        } else if need.open && c.status == CollaborationStatus::Closed {
            Some(ServiceError::Gone(
                "the collaboration is closed and its data destroyed".into(),
            ))
        } else {
            need.ability.filter(|a| !m.abilities.contains(*a)).map(|a| {
                ServiceError::Forbidden(format!(
                    "your organisation does not have the {} ability in this collaboration",
                    a.as_str()
                ))
            })
        };
        match problem {
            Some(e) => Err(self.refuse(&ctx, e).await),
            None => Ok((c, m, ctx)),
        }
    }

    /// A collaboration with its members, for a member or invitee.
    pub async fn get_collaboration(
        &self,
        p: &Principal,
        collab: &str,
    ) -> Result<CollaborationView, ServiceError> {
        let ctx = AuditCtx::by(p, Action::CollaborationShow, "-");
        let (c, you) = self.membership_of(p, collab, &ctx).await?;
        let members = self
            .meta
            .list_members(c.id)
            .await?
            .into_iter()
            .filter(|m| you.is_active() || m.is_active() || m.org_id == p.org.id)
            .collect::<Vec<_>>();
        let creator = members
            .iter()
            .find(|m| m.org_id == c.creator_org_id)
            .map(|m| m.org_name.clone())
            .ok_or_else(|| ServiceError::Internal("collaboration without its creator".into()))?;
        Ok(CollaborationView {
            collaboration: c,
            creator,
            you,
            members,
        })
    }

    /// Invites an organisation. Only the creating organisation may invite.
    pub async fn invite(
        &self,
        p: &Principal,
        collab: &str,
        org_name: &str,
        abilities: Abilities,
    ) -> Result<Membership, ServiceError> {
        let ctx = AuditCtx::by(p, Action::CollaborationInvite, org_name);
        let (c, _, ctx) = self.active_member(p, collab, ctx, Need::open()).await?;
        if c.creator_org_id != p.org.id {
            let e = ServiceError::Forbidden(
                "only the organisation that created the collaboration may invite".into(),
            );
            return Err(self.refuse(&ctx, e).await);
        }
        let name = self.audited(&ctx.on("-"), OrgName::parse(org_name)).await?;
        let Some(org) = self.meta.find_org(&name).await? else {
            let e = ServiceError::NotFound(format!("no organisation named {name}"));
            return Err(self.refuse(&ctx, e).await);
        };
        if abilities.is_empty() {
            let e = ServiceError::InvalidInput("name at least one ability".into());
            return Err(self.refuse(&ctx, e).await);
        }
        let m = Membership {
            collaboration_id: c.id,
            org_id: org.id,
            org_name: org.name.clone(),
            abilities,
            status: MemberStatus::Invited,
            invited_at: now(),
            joined_at: None,
        };
        let audit = ctx
            .on(org.name.as_str())
            .entry(Outcome::Allowed, format!("abilities {abilities}"));
        match self.meta.invite(&m, audit).await {
            Ok(()) => Ok(m),
            Err(MetaError::Conflict(msg)) => {
                Err(self.refuse(&ctx, ServiceError::Conflict(msg)).await)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Accepts (or declines) the caller's organisation's invitation.
    pub async fn respond(
        &self,
        p: &Principal,
        collab: &str,
        accept: bool,
    ) -> Result<(), ServiceError> {
        let action = if accept {
            Action::CollaborationAccept
        } else {
            Action::CollaborationDecline
        };
        let ctx = AuditCtx::by(p, action, p.org.name.as_str());
        let (c, m) = self.membership_of(p, collab, &ctx).await?;
        let ctx = ctx.in_chain(c.id);
        if c.status == CollaborationStatus::Closed {
            let e = ServiceError::Gone("the collaboration is closed".into());
            return Err(self.refuse(&ctx, e).await);
        }
        if m.status != MemberStatus::Invited {
            let e = ServiceError::Conflict(format!(
                "your organisation is already {} in this collaboration",
                m.status
            ));
            return Err(self.refuse(&ctx, e).await);
        }
        let audit = ctx.entry(Outcome::Allowed, format!("abilities {}", m.abilities));
        Ok(self
            .meta
            .respond_invitation(c.id, p.org.id, accept, audit)
            .await?)
    }

    /// Closes a collaboration and crypto-shreds its data: the collaboration key and every
    /// dataset key are destroyed in one transaction, then the ciphertext files are deleted.
    /// Only the creating organisation's admins may close.
    pub async fn close_collaboration(
        &self,
        p: &Principal,
        collab: &str,
    ) -> Result<u64, ServiceError> {
        let ctx = AuditCtx::by(p, Action::CollaborationClose, "-");
        let (c, _, ctx) = self.active_member(p, collab, ctx, Need::open()).await?;
        let ctx = ctx.on(c.name.as_str());
        if c.creator_org_id != p.org.id || !p.is_admin() {
            let e = ServiceError::Forbidden(
                "only an admin of the organisation that created the collaboration may close it"
                    .into(),
            );
            return Err(self.refuse(&ctx, e).await);
        }
        let audit = ctx.entry(Outcome::Allowed, "");
        let shredded = self.meta.close_collaboration(c.id, audit).await?;
        let store = self.files.clone();
        let cid = c.id;
        let files = tokio::task::spawn_blocking(move || store.remove_collaboration_files(cid))
            .await
            .map_err(|e| ServiceError::Internal(format!("removing files failed: {e}")))??;
        tracing::info!(collaboration = %c.id, keys = shredded, files, "collaboration closed and crypto-shredded");
        Ok(shredded)
    }
}
