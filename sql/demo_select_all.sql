-- All rows, all columns
SELECT * FROM Agents ORDER BY AgentId
