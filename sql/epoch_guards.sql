-- Refuse any row written under a retired key epoch (`spyctl key retire`).
-- A process that started before the retirement may still hold that epoch's
-- secret for a moment; its write fails here (the client retries and meets
-- the new keys) instead of leaving a row nothing can ever open.
CREATE TRIGGER IF NOT EXISTS MessagesEpochLive BEFORE INSERT ON Messages
WHEN NEW.KeyEpoch IN (SELECT Epoch FROM KeyEpochs WHERE RetiredAt IS NOT NULL)
BEGIN SELECT RAISE(ABORT, 'key epoch retired'); END;

CREATE TRIGGER IF NOT EXISTS FilesEpochLive BEFORE INSERT ON Files
WHEN NEW.KeyEpoch IN (SELECT Epoch FROM KeyEpochs WHERE RetiredAt IS NOT NULL)
BEGIN SELECT RAISE(ABORT, 'key epoch retired'); END;

CREATE TRIGGER IF NOT EXISTS AgentsEpochLive BEFORE INSERT ON Agents
WHEN NEW.KeyEpoch IN (SELECT Epoch FROM KeyEpochs WHERE RetiredAt IS NOT NULL)
BEGIN SELECT RAISE(ABORT, 'key epoch retired'); END;

CREATE TRIGGER IF NOT EXISTS AgentsEpochLiveOnUpdate BEFORE UPDATE OF KeyEpoch ON Agents
WHEN NEW.KeyEpoch IN (SELECT Epoch FROM KeyEpochs WHERE RetiredAt IS NOT NULL)
BEGIN SELECT RAISE(ABORT, 'key epoch retired'); END;

CREATE TRIGGER IF NOT EXISTS AuditEpochLive BEFORE INSERT ON Audit
WHEN NEW.KeyEpoch IN (SELECT Epoch FROM KeyEpochs WHERE RetiredAt IS NOT NULL)
BEGIN SELECT RAISE(ABORT, 'key epoch retired'); END;

CREATE TRIGGER IF NOT EXISTS EnrolCodesEpochLive BEFORE INSERT ON EnrolCodes
WHEN NEW.KeyEpoch IN (SELECT Epoch FROM KeyEpochs WHERE RetiredAt IS NOT NULL)
BEGIN SELECT RAISE(ABORT, 'key epoch retired'); END;
